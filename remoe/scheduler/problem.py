"""What a plan is computed from: the request, the model's shape, the machine's profile and the prices.

L = MoE layers, E = routed experts per layer. Times in seconds, memory in GB (1 GB buys 1 vCPU), bytes as
bytes, prices in dollars per GB-second of memory held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from remoe.scheduler.host_cores import speed_memory_gb

# Defaults from published prices (docs/scheduler.md cites them): AWS Lambda x86 duration, us-east-1, first
# tier: $0.0000166667 per GB-s; Google Cloud Run NVIDIA L4 (24 GB), about $0.67 per hour: per GB of GPU
# memory $0.67 / 3600 / 24 = $7.75e-6 per GB-s.
LAMBDA_GB_S = 0.0000166667
CLOUD_RUN_L4_GPU_GB_S = 0.67 / 3600 / 24


@dataclass(slots=True)
class Prices:
    cpu_gb_s: float = LAMBDA_GB_S  # c_c: CPU-side memory (functions and the main model's CPU part)
    gpu_gb_s: float = CLOUD_RUN_L4_GPU_GB_S  # c_g: GPU memory of the main model

    def __post_init__(self) -> None:
        if self.cpu_gb_s <= 0 or self.gpu_gb_s <= 0:
            raise ValueError(f"prices must be > 0, got cpu {self.cpu_gb_s}, gpu {self.gpu_gb_s}")


@dataclass(slots=True)
class Profile:
    """This machine's measured speeds (`remoe profile` writes them); the defaults are placeholders in the
    range measured on the project's 2-core Xeon for the tiny models."""

    local_expert_s_per_token: float = 2e-4  # one expert, one token, on the main model's CPU
    # An expert's time per token in a prefill batch (weights read once for many tokens: far below the one-token
    # time where the weights' bytes set it); None: the one-token rate. Likewise for the one-device systems.
    local_expert_prefill_s_per_token: float | None = None
    backbone_prefill_s_per_token: float = 2e-4  # per MoE layer: attention, router, shared parts
    backbone_prefill_layer_s: float = 0.0  # per MoE layer per prefill, whatever the length (calls, dispatch)
    backbone_decode_s: float = 1e-3  # per MoE layer per decode step, at no context
    # ... and per token the step attends to (prompt + tokens so far): attention over the KV cache, and on
    # DeepSeek's MLA the cache's latents decompressed again each step. 0: a profile from before it was measured.
    backbone_decode_s_per_context_token: float = 0.0
    swap_s_per_token: float = 1e-6  # tau_sw: hidden states to/from the expert side, per token
    invoke_s: float = 2e-3  # t_rem: a warm function invocation's fixed overhead
    # The backbone's own serial work per replica it calls in a layer (encode, send, receive, decode): unlike
    # t_rem it does not overlap across replicas. 0 in the paper's model; `remoe profile` measures it.
    dispatch_s: float = 0.0
    # A function's fixed cost per expert it computes in a batch (its executor's per-expert work), on top of
    # T(y) per token. 0 in the paper's model; `remoe profile` measures it.
    expert_call_s: float = 0.0
    bandwidth_bytes_s: float = 1e9  # B
    cold_start_s: float = 3.5  # a function's cold start (overlapped with the main model's when pre-warmed)
    # Remote time per expert per token on a function with y GB: T(y) = th1 * exp(-th2 * y) + th3.
    remote_fit: tuple[float, float, float] = (2e-3, 2.44, 2e-4)
    # For the baselines: the whole model on a CPU (backbone there too) or on the GPU (experts there too), each
    # per MoE layer like the backbone's (the CPU's measured in one process, the GPU's with every expert in the
    # backbone process; on a CPU-only machine both run on its cores).
    cpu_backbone_prefill_s_per_token: float = 2e-4
    cpu_backbone_prefill_layer_s: float = 0.0
    cpu_backbone_decode_s: float = 1e-3
    cpu_backbone_decode_s_per_context_token: float = 0.0
    cpu_expert_s_per_token: float = 2e-4  # one expert, one token, with every core (a profile without it: t_loc)
    cpu_expert_prefill_s_per_token: float | None = None
    gpu_backbone_prefill_s_per_token: float = 2e-4  # (a profile without the gpu_backbone_* ones: the backbone's)
    gpu_backbone_prefill_layer_s: float = 0.0
    gpu_backbone_decode_s: float = 1e-3
    gpu_backbone_decode_s_per_context_token: float = 0.0
    gpu_expert_s_per_token: float = 2e-4
    gpu_expert_prefill_s_per_token: float | None = None
    device: str = "cpu"  # where backbone_* were measured: on a CPU-only machine the "GPU" numbers are the CPU's
    # The host's cores where functions run as processes beside the backbone (the local platform, as `remoe
    # profile` measures them): floor(y) threads each, all of a layer's expert work on these cores (host_cores.py).
    # 0: each function has a CPU share of its own (a serverless platform; the paper's model).
    function_host_cores: int = 0

    def __post_init__(self) -> None:
        for where in ("local", "cpu", "gpu"):
            if getattr(self, f"{where}_expert_prefill_s_per_token") is None:
                setattr(self, f"{where}_expert_prefill_s_per_token", getattr(self, f"{where}_expert_s_per_token"))

    def remote_s_per_token(self, memory_gb: float) -> float:
        th1, th2, th3 = self.remote_fit
        return th1 * math.exp(-th2 * float(speed_memory_gb(memory_gb, self.function_host_cores))) + th3


@dataclass(slots=True)
class Limits:
    memory_step_gb: float = 0.1  # specs come in 100 MB steps
    remote_memory_gb: tuple[float, float] = (1.0, 5.0)  # [m1, mV] of a remote function
    main_memory_gb: tuple[float, float] = (1.0, 40.0)
    payload_bytes: int = 6 * 2**20  # U: one invocation's request size limit
    max_replicas: int = 8  # z_max


@dataclass(slots=True)
class Request:
    frequency: np.ndarray  # [L, E] forecast share of each layer's routed slots per expert (rows sum to 1)
    n_in: int
    n_out: int
    top_k: int
    expert_bytes: int  # one routed expert's weights
    hidden_bytes_per_token: int  # D: one token's hidden state on the wire
    backbone_bytes: int  # the main model's non-expert weights (GPU)
    kv_bytes_per_token: int = 0
    slo_ttft_s: float = math.inf
    slo_tpot_s: float = math.inf
    confidence: float = 0.95  # worst-case tokens per expert hold with this probability (exact binomial)

    def __post_init__(self) -> None:
        f = np.asarray(self.frequency, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 1 or f.shape[1] < 1:
            raise ValueError(f"frequency must be [layers, experts], got shape {f.shape}")
        if (f < 0).any() or not np.allclose(f.sum(axis=1), 1.0, atol=1e-3):
            raise ValueError("each frequency row must be non-negative and sum to 1")
        if self.n_in < 1 or self.n_out < 0 or not 1 <= self.top_k <= f.shape[1]:
            raise ValueError(
                f"need n_in >= 1, n_out >= 0, 1 <= top_k <= experts; got {self.n_in}, {self.n_out}, {self.top_k}"
            )
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        self.frequency = f

    @property
    def layers(self) -> int:
        return self.frequency.shape[0]

    @property
    def experts(self) -> int:
        return self.frequency.shape[1]
