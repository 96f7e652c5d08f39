"""Generated gRPC stubs for protos/remoe/v1 (regenerate with `make protos`; never edit by hand)."""
