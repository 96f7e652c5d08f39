"""The scheduler: turn a forecast into the cheapest plan that meets the latency SLO (the paper's MMP,
utility-based remote selection, Lagrangian memory sizing and LPT replicas), and cost any plan."""
