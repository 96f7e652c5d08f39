"""The backbone's per-layer fan-out: each MoE layer's rows sent to the expert services and functions that host
their experts (starting functions through a platform), the answers gathered, failures retried elsewhere."""
