"""The paper's baselines, costed by the same model and prices as Remoe's plans.

- CPU: the whole model in one CPU function (backbone, KV cache and every expert in CPU memory).
- GPU: the whole model in one GPU function.
- MIX: backbone on the GPU, every expert on the main function's CPU (Remoe with nothing remote).
- Fetch: idealised offloading: the model on the GPU but only the experts of the layer being computed and the
  next one resident (perfect prefetch, zero swap time), so GPU memory is the backbone plus two layers' experts
  a request uses.
Latency uses the worst-case token counts, cost the expected ones, as in estimate.py. L = layers, E = experts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from remoe.scheduler.estimate import (
    GIB,
    LayerPlan,
    Tokens,
    decode_context,
    decode_steps,
    estimate,
    main_memory_gb,
    round_up,
)
from remoe.scheduler.planner import plan
from remoe.scheduler.price_sets import PriceSet
from remoe.scheduler.problem import Limits, Prices, Profile, Request


@dataclass(frozen=True, slots=True)
class SystemCost:
    system: str
    ttft_s: float
    tpot_s: float
    cost: float  # $ per request
    gpu_gb: float
    cpu_gb: float  # main model's CPU memory (functions excluded)
    remote_cost: float = 0.0
    meets_slo: bool = True
    invocations: float = 0.0  # expected function invocations (Remoe's remote experts), for a per-request fee

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__slots__}


def _kv_gb(request: Request) -> float:
    return request.kv_bytes_per_token * (request.n_in + request.n_out) / GIB


@dataclass(frozen=True, slots=True)
class DeviceSpeeds:
    """One device holding the backbone and every expert: per MoE layer."""

    prefill_layer_s: float  # fixed, per prefill
    prefill_token_s: float  # the backbone, per prompt token
    decode_s: float  # the backbone, per decode step, at no context
    decode_s_per_context_token: float  # ... and per token the step attends to
    expert_s: float  # one expert, one token (decode)
    expert_prefill_s: float  # one expert, per token of a prefill batch


def _one_device(request: Request, tokens: Tokens, speeds: DeviceSpeeds) -> tuple[float, float, float]:
    """(TTFT, TPOT, expected busy seconds) with the backbone and every expert on one device, run in turn: per
    MoE layer a fixed prefill cost, the prompt's tokens through the backbone and its expert-token pairs."""
    worst, expected = tokens.worst.sum(1), tokens.expected.sum(1)  # [L] expert-token pairs per layer
    base = speeds.prefill_layer_s + request.n_in * speeds.prefill_token_s
    ttft = float((base + worst * speeds.expert_prefill_s).sum())
    decode = speeds.decode_s + speeds.decode_s_per_context_token * decode_context(request)
    tpot = request.layers * (decode + request.top_k * speeds.expert_s)
    prefill = float((base + expected * speeds.expert_prefill_s).sum())
    return ttft, tpot, prefill + decode_steps(request) * tpot


def _meets(request: Request, ttft: float, tpot: float) -> bool:
    return ttft <= request.slo_ttft_s * (1 + 1e-9) and tpot <= request.slo_tpot_s * (1 + 1e-9)


def _on_one_device(request: Request, profile: Profile, tokens: Tokens, gpu: bool) -> tuple[float, float, float]:
    """(TTFT, TPOT, busy seconds) with the whole model on the GPU (gpu=True) or on the CPU."""
    p = profile
    if gpu:
        speeds = DeviceSpeeds(
            p.gpu_backbone_prefill_layer_s,
            p.gpu_backbone_prefill_s_per_token,
            p.gpu_backbone_decode_s,
            p.gpu_backbone_decode_s_per_context_token,
            p.gpu_expert_s_per_token,
            p.gpu_expert_prefill_s_per_token,
        )
    else:
        speeds = DeviceSpeeds(
            p.cpu_backbone_prefill_layer_s,
            p.cpu_backbone_prefill_s_per_token,
            p.cpu_backbone_decode_s,
            p.cpu_backbone_decode_s_per_context_token,
            p.cpu_expert_s_per_token,
            p.cpu_expert_prefill_s_per_token,
        )
    return _one_device(request, tokens, speeds)


def _memory_gb(request: Request, limits: Limits, experts: int) -> float:
    """Backbone + KV cache + this many experts' weights, rounded up to the memory step, at least the smallest
    main-model size (as MIX's and Remoe's main model, on the GPU and the CPU alike)."""
    gb = request.backbone_bytes / GIB + _kv_gb(request) + experts * request.expert_bytes / GIB
    return max(limits.main_memory_gb[0], round_up(gb, limits.memory_step_gb))


def cpu_only(request: Request, profile: Profile, prices: Prices, limits: Limits, tokens: Tokens) -> SystemCost:
    ttft, tpot, busy = _on_one_device(request, profile, tokens, gpu=False)
    memory = _memory_gb(request, limits, request.layers * request.experts)
    return SystemCost("CPU", ttft, tpot, prices.cpu_gb_s * memory * busy, 0.0, memory, 0.0, _meets(request, ttft, tpot))


def gpu_only(request: Request, profile: Profile, prices: Prices, limits: Limits, tokens: Tokens) -> SystemCost:
    ttft, tpot, busy = _on_one_device(request, profile, tokens, gpu=True)
    memory = _memory_gb(request, limits, request.layers * request.experts)
    return SystemCost("GPU", ttft, tpot, prices.gpu_gb_s * memory * busy, memory, 0.0, 0.0, _meets(request, ttft, tpot))


def fetch(request: Request, profile: Profile, prices: Prices, limits: Limits, tokens: Tokens) -> SystemCost:
    ttft, tpot, busy = _on_one_device(request, profile, tokens, gpu=True)
    used = (tokens.route > 0).sum(1)  # [L] experts the request may touch per layer
    window = (used[:-1] + used[1:]) if request.layers > 1 else used  # the layer computed and the one prefetched
    memory = _memory_gb(request, limits, int(window.max()))
    return SystemCost(
        "Fetch", ttft, tpot, prices.gpu_gb_s * memory * busy, memory, 0.0, 0.0, _meets(request, ttft, tpot)
    )


def mix(request: Request, profile: Profile, prices: Prices, limits: Limits, tokens: Tokens) -> SystemCost:
    layers = [LayerPlan() for _ in range(request.layers)]
    est = estimate(request, layers, profile, prices, limits, tokens)
    gpu_gb, cpu_gb = main_memory_gb(request, [() for _ in layers], limits)
    return SystemCost(
        "MIX", est.ttft_s, est.tpot_s, est.cost, gpu_gb, cpu_gb, 0.0, _meets(request, est.ttft_s, est.tpot_s)
    )


def remoe(request: Request, profile: Profile, prices: Prices, limits: Limits, tokens: Tokens) -> SystemCost:
    result = plan(request, profile, prices, limits)
    est = result.estimate
    return SystemCost(
        "Remoe",
        est.ttft_s,
        est.tpot_s,
        est.cost,
        result.main_gpu_gb,
        result.main_cpu_gb,
        est.cost_remote,
        result.feasible,
        est.invocations,
    )


SYSTEMS = {"CPU": cpu_only, "GPU": gpu_only, "MIX": mix, "Fetch": fetch, "Remoe": remoe}


def compare(
    request: Request, profile: Profile, prices: Prices | None = None, limits: Limits | None = None
) -> dict[str, SystemCost]:
    """Every system on one request, same model, same prices."""
    prices, limits = prices or Prices(), limits or Limits()
    tokens = Tokens.of(request)
    return {name: system(request, profile, prices, limits, tokens) for name, system in SYSTEMS.items()}


def summarise(results: list[SystemCost]) -> dict:
    """Over a workload: total and mean cost, mean TTFT/TPOT and memory, share of requests within the SLO."""
    return {
        "total_cost": float(sum(r.cost for r in results)),
        "mean_cost": float(np.mean([r.cost for r in results])),
        "mean_remote_cost": float(np.mean([r.remote_cost for r in results])),
        "mean_ttft_s": float(np.mean([r.ttft_s for r in results])),
        "mean_tpot_s": float(np.mean([r.tpot_s for r in results])),
        "slo_attainment": float(np.mean([r.meets_slo for r in results])),
        "mean_invocations": float(np.mean([r.invocations for r in results])),
        "mean_gpu_gb": float(np.mean([r.gpu_gb for r in results])),
        "mean_cpu_gb": float(np.mean([r.cpu_gb for r in results])),
    }


def billed_under(result: SystemCost, price: PriceSet) -> SystemCost:
    """The same request as `price` bills it: a whole-GPU set bills the main model's GPU as whole cards per second
    held, as many as its GPU memory needs, whatever they hold (as GPU platforms bill); a per-request fee is
    charged per expected function invocation. The CPU memory and the functions' GB-seconds as before."""
    cost, prices = result.cost + price.request_fee * result.invocations, price.prices
    if price.whole_gpu_s and result.gpu_gb > 0:
        rate = prices.gpu_gb_s * result.gpu_gb + prices.cpu_gb_s * result.cpu_gb
        busy = (result.cost - result.remote_cost) / rate  # the main model's seconds
        whole = busy * (price.gpus(result.gpu_gb) * price.whole_gpu_s + prices.cpu_gb_s * result.cpu_gb)
        cost += whole - (result.cost - result.remote_cost)
    return replace(result, cost=cost)


def workload_costs(
    requests: list[Request], profile: Profile, price: PriceSet | Prices | None = None, limits: Limits | None = None
) -> dict[str, dict]:
    """Per system, `summarise` over the requests: planned at the per-GB prices, billed as a price set bills."""
    prices = price.prices if isinstance(price, PriceSet) else price
    rows: dict[str, list[SystemCost]] = {name: [] for name in SYSTEMS}
    for request in requests:
        for name, result in compare(request, profile, prices, limits).items():
            rows[name].append(billed_under(result, price) if isinstance(price, PriceSet) else result)
    return {name: summarise(results) for name, results in rows.items()}
