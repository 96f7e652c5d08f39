"""The paper's latency and cost model for one request under a plan.

Prefill, per MoE layer l: PT_l = t_layer + n_in * t_backbone + max(local, max_j ZT_lj) + 2 * tau_sw * n_in, with
local = sum over local experts of tokens_e * t_loc_prefill (the batched rate) and ZT_lj = sum over replica
j's experts of tokens_e * (T(y_l) + 2 D / B) + t_rem. Decode, per token: GT_l = t_backbone_decode + 2 * tau_sw +
max(k * t_loc, k * T(y_l) + 2 D / B + t_rem) (the worst split of the token's k experts). Remoe adds measured
terms the paper leaves out: t_layer, a fixed prefill cost per layer; t_dispatch, the backbone's own serial work
per replica it calls (z_l of them in prefill, min(k, z_l) per decode token); a function's fixed cost per expert
it computes in a batch (t_call, added per routed expert to ZT_lj and per remote expert of a decode token); and
t_context in t_backbone_decode = t_decode + t_context * (n_in + n_out / 2), a step's attention growing with the
tokens it attends to (the decode's mean). TTFT = sum PT_l, TPOT = sum GT_l. Constraints use worst-case token
counts (mmp.py); cost uses expected ones: main = (prefill + (n_out - 1) * decode) * (c_g * GPU GB + c_c * CPU
GB); each remote replica bills c_c * y_l for the time it computes. Functions on the backbone's host share its
cores (Profile.function_host_cores, host_cores.py): the prefill expert phase lasts at least all its batches'
core-seconds over them, and each replica's billed time is stretched by the threads beside it. L = MoE layers,
E = experts per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from remoe.scheduler import host_cores
from remoe.scheduler.mmp import expected_tokens, route_probability, worst_case_tokens
from remoe.scheduler.problem import Limits, Prices, Profile, Request

GIB = 2**30


@dataclass(frozen=True, slots=True)
class LayerPlan:
    remote: tuple[int, ...] = ()  # experts served by this layer's remote function
    memory_gb: float = 0.0  # y_l, each replica's memory (0 without remote experts)
    replicas: tuple[tuple[int, ...], ...] = ()  # expert -> replica assignment


@dataclass(frozen=True, slots=True)
class Estimate:
    ttft_s: float
    tpot_s: float
    cost_main: float
    cost_remote: float
    invocations: float = 0.0  # expected function invocations (each replica called in prefill, per decode token)

    @property
    def cost(self) -> float:
        return self.cost_main + self.cost_remote


def round_up(gb: float, step: float) -> float:
    return round(math.ceil(gb / step - 1e-9) * step, 6)


@dataclass(slots=True)
class Tokens:
    worst: np.ndarray  # [L, E] prefill tokens per expert at the request's confidence
    expected: np.ndarray  # [L, E]
    route: np.ndarray  # [L, E] probability that one token uses the expert

    @classmethod
    def of(cls, request: Request) -> Tokens:
        route = route_probability(request.frequency, request.top_k)
        return cls(
            worst_case_tokens(request.n_in, route, request.confidence), expected_tokens(request.n_in, route), route
        )


def decode_steps(request: Request) -> int:
    """Forward steps after the prefill: the prefill yields the first of the n_out tokens."""
    return max(request.n_out - 1, 0)


def decode_context(request: Request) -> float:
    """Mean tokens a decode step attends to: the prompt and the tokens before it (step t of n_out - 1 attends
    n_in + t), as the client's TPOT is the mean step."""
    return request.n_in + request.n_out / 2


def backbone_decode_s(request: Request, profile: Profile) -> float:
    """The backbone's part of the mean decode step, per MoE layer."""
    return profile.backbone_decode_s + profile.backbone_decode_s_per_context_token * decode_context(request)


def main_memory_gb(request: Request, remote: list[tuple[int, ...]], limits: Limits) -> tuple[float, float]:
    """(GPU GB, CPU GB) of the main model: backbone + KV cache on the GPU, local experts on the CPU; each at
    least the smallest main-model size (one minimum for every memory kind)."""
    gpu = (request.backbone_bytes + request.kv_bytes_per_token * (request.n_in + request.n_out)) / GIB
    local_experts = sum(request.experts - len(r) for r in remote)
    cpu = local_experts * request.expert_bytes / GIB
    low, high = limits.main_memory_gb
    return max(low, round_up(gpu, limits.memory_step_gb)), min(high, max(low, round_up(cpu, limits.memory_step_gb)))


def layer_prefill_s(
    tokens: np.ndarray, plan: LayerPlan, request: Request, profile: Profile, route: np.ndarray
) -> tuple[float, list[float]]:
    """(layer prefill time, its replicas' billed time summed) for token counts [E] of one layer; route [E]: which
    experts the prompt may use (each costs its replica a call)."""
    remote = set(plan.remote)
    local = sum(float(tokens[e]) for e in range(request.experts) if e not in remote)
    local_s = local * profile.local_expert_prefill_s_per_token
    per_token = (
        profile.remote_s_per_token(plan.memory_gb) + 2 * request.hidden_bytes_per_token / profile.bandwidth_bytes_s
        if remote
        else 0.0
    )
    alone = [
        sum(float(tokens[e]) for e in part) * per_token
        + profile.invoke_s
        + profile.expert_call_s * sum(1 for e in part if route[e] > 0)
        for part in plan.replicas
        if part
    ]
    # On the host's cores the batches share them (host_cores.py): the phase, and each replica's billed time.
    cores = profile.function_host_cores
    n = float(host_cores.threads(plan.memory_gb, cores))
    expert_s = float(host_cores.expert_phase_s(max([local_s, *alone]), local_s + n * sum(alone), cores))
    billed = float(host_cores.replicas_billed_s(sum(alone), len(alone), n, local_s > 0, expert_s, cores))
    backbone_s = profile.backbone_prefill_layer_s + request.n_in * profile.backbone_prefill_s_per_token
    backbone_s += profile.dispatch_s * len(alone)
    return backbone_s + expert_s + 2 * profile.swap_s_per_token * request.n_in, billed


def layer_decode_s(plan: LayerPlan, request: Request, profile: Profile) -> float:
    """Worst-case time of one decode token in this layer."""
    k = request.top_k
    local_s = min(k, request.experts - len(plan.remote)) * profile.local_expert_s_per_token
    remote_s = 0.0
    if plan.remote:
        remote_s = (
            min(k, len(plan.remote)) * (profile.remote_s_per_token(plan.memory_gb) + profile.expert_call_s)
            + 2 * request.hidden_bytes_per_token / profile.bandwidth_bytes_s
            + profile.invoke_s
        )
    dispatch = profile.dispatch_s * min(k, len([p for p in plan.replicas if p]))
    return backbone_decode_s(request, profile) + dispatch + 2 * profile.swap_s_per_token + max(local_s, remote_s)


def invocations(plan: LayerPlan, tokens: np.ndarray, route: np.ndarray, request: Request) -> float:
    """Expected calls to this layer's replicas: one per replica the prompt's tokens [E] reach, then per decode
    token one per replica hosting one of its experts (capped at one expected call per replica)."""
    prefill = sum(1 for part in plan.replicas if part and sum(float(tokens[e]) for e in part) > 0)
    decode = sum(min(1.0, float(sum(route[e] for e in part))) for part in plan.replicas if part)
    return prefill + decode_steps(request) * decode


def remote_decode_busy_s(plan: LayerPlan, route: np.ndarray, request: Request, profile: Profile) -> float:
    """Expected replica compute time over the whole decode (all replicas of one layer)."""
    if not plan.remote:
        return 0.0
    per_token = profile.remote_s_per_token(plan.memory_gb) + 2 * request.hidden_bytes_per_token / (
        profile.bandwidth_bytes_s
    )
    busy, invoked = 0.0, 0.0
    for part in plan.replicas:
        hit = float(sum(route[e] for e in part))  # expected experts of this replica one token uses
        busy += hit * (per_token + profile.expert_call_s) + min(1.0, hit) * profile.invoke_s
        invoked += min(1.0, hit)
    # the replicas a token calls compute beside each other and the main model's own experts (if it has any here)
    cores = profile.function_host_cores
    threads = invoked * float(host_cores.threads(plan.memory_gb, cores)) + (request.experts > len(plan.remote))
    return decode_steps(request) * float(host_cores.stretched_s(busy, threads, np.inf, cores))


def estimate(
    request: Request,
    layers: list[LayerPlan],
    profile: Profile,
    prices: Prices,
    limits: Limits,
    tokens: Tokens | None = None,
    main_gb: tuple[float, float] | None = None,
) -> Estimate:
    """`main_gb`: the main model's (GPU GB, CPU GB) as provisioned (a plan made for a longer request's bucket);
    default: what this request needs."""
    if len(layers) != request.layers:
        raise ValueError(f"a plan for {len(layers)} layers, the request has {request.layers}")
    tokens = tokens or Tokens.of(request)
    gpu_gb, cpu_gb = main_gb or main_memory_gb(request, [p.remote for p in layers], limits)
    ttft = sum(layer_prefill_s(tokens.worst[i], p, request, profile, tokens.route[i])[0] for i, p in enumerate(layers))
    tpot = sum(layer_decode_s(p, request, profile) for p in layers)
    expected_prefill, remote_cost, calls = 0.0, 0.0, 0.0
    for i, p in enumerate(layers):
        seconds, billed = layer_prefill_s(tokens.expected[i], p, request, profile, tokens.route[i])
        expected_prefill += seconds
        calls += invocations(p, tokens.expected[i], tokens.route[i], request)
        remote_cost += (
            prices.cpu_gb_s * p.memory_gb * (billed + remote_decode_busy_s(p, tokens.route[i], request, profile))
        )
    main_s = expected_prefill + decode_steps(request) * tpot
    main_cost = main_s * (prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb)
    return Estimate(ttft, tpot, main_cost, remote_cost, calls)
