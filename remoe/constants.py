"""Facts several parts of Remoe must agree on, each written once. This module imports nothing of remoe, so any
layer (the SDK, the serverless function, the CLI) can read it without pulling in another."""

from __future__ import annotations

# gRPC's own retry hint in trailing metadata (its retry policy honours it): how long a refused client should wait.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"

# The Knative expert function's container image: what `make images` builds (docker/Dockerfile, target function).
FUNCTION_IMAGE = "remoe/expert-function:0.1.0"

# The volume (a Kubernetes PersistentVolumeClaim) that holds the model for the functions and services.
MODEL_VOLUME = "remoe-models"

# The metering ledger's Redis stream.
LEDGER_STREAM = "remoe:ledger"

# Memory buys compute, as in the paper: each GiB of a function's memory buys one vCPU (Knative: a CPU request of
# memory / this, in millicores; the local platform: that many whole threads).
MEMORY_MB_PER_VCPU = 1024
