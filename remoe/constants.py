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

# The smallest function a platform starts (the scheduler's plans use 1 GB and more: its size range, not a limit).
MIN_FUNCTION_MEMORY_MB = 128

# The largest tensor one message carries (bytes); gRPC's message limit is set from it (transport/channel.py).
MAX_TENSOR_BYTES = 64 * 1024 * 1024

# The longest prompt accepted (characters), at the gateway and the predictor alike: refused before tokenizing.
MAX_PROMPT_CHARS = 1_000_000


class FunctionEnv:
    """The environment variables that configure an expert function: its platform (local or Knative) sets them,
    the function reads them (remoe/functions/config.py)."""

    MODEL_DIR = "REMOE_MODEL_DIR"
    EXPERTS = "REMOE_FUNCTION_EXPERTS"  # "LAYER:E,E;LAYER:E"
    NAME = "REMOE_FUNCTION_NAME"
    HOST = "REMOE_HOST"
    PORT = "PORT"  # Knative sets it
    MEMORY_BYTES = "REMOE_MEMORY_BYTES"
    DTYPE = "REMOE_DTYPE"
    READY_FILE = "REMOE_READY_FILE"
    SPAWNED_AT = "REMOE_SPAWNED_AT"
    LOCAL_PLANE = "REMOE_LOCAL_PLANE"
    PARENT_PID = "REMOE_FUNCTION_PARENT_PID"  # the local platform's pid: the function exits when it is gone
    EXPERTS_RECORD = "REMOE_FUNCTION_EXPERTS_RECORD"  # local platform: the backbone's experts record (lean open)


# Set by `remoe up` (LocalCluster) on every service it starts: the service stops when that process is gone, so a
# `remoe up` killed hard (SIGKILL, out of memory) leaves no service running and holding memory and ports.
SERVICE_PARENT_PID = "REMOE_SERVICE_PARENT_PID"
# An expert service drops the experts it loaded for another destination's batches (a function still starting, a
# failed service) once unused this long: a function starts in well under it, and its experts then stop coming.
GUEST_IDLE_S = 10.0

# Decode seconds a full `remoe profile` times per end-to-end configuration, at least: on a shared 2-core machine a
# 1-s sample's TPOT was off its cluster's mean by 11-13% RMS, a 30-s one by 5-7% (docs/results/profile_sampling.md).
# Longer does not help past that: one cluster's mean was off another's by 13% RMS there.
DECODE_SAMPLE_S = 30.0
