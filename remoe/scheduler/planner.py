"""The cheapest plan that meets the SLO: which experts leave the main model, the functions' memory and
replicas, and the main model's memory. The paper's heuristic, as pure functions over a `Request`:

1. Remote selection: utility u = n_in s + n_out top_k s per expert; for each remote ratio b the b*E
   lowest-utility experts of every layer go to that layer's function (ties by expert index).
2. Replicas: enough for the payload limit, experts spread by LPT (replicas.py); then replicas are added
   greedily, one layer at a time, while that makes the plan feasible or cheaper (up to z_max).
3. Memory: the Lagrangian dual over layers (sizing.py), on the 100 MB grid.
4. Main memory: the smallest spec that holds the backbone and KV cache (GPU) and the local experts (CPU).
The cheapest feasible plan over all ratios wins; when none is feasible, the fastest one is returned with
feasible=False and the constraint that binds. L = MoE layers, E = experts per layer, G = memory grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remoe.scheduler.estimate import Estimate, LayerPlan, Tokens, estimate, main_memory_gb
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.replicas import lpt_partition, min_replicas_for_payload
from remoe.scheduler.sizing import Curves, convexity, memory_grid, solve


@dataclass(frozen=True, slots=True)
class Plan:
    layers: list[LayerPlan]
    main_gpu_gb: float
    main_cpu_gb: float
    estimate: Estimate
    feasible: bool
    binding: str  # which SLO constraint's multiplier is positive: "ttft", "tpot", "both" or "none"
    remote_per_layer: int
    report: dict = field(default_factory=dict)


def utility(request: Request) -> np.ndarray:
    """[L, E] u = n_in s + n_out top_k s: the tokens an expert is expected to process."""
    return request.n_in * request.frequency + request.n_out * request.top_k * request.frequency


def remote_sets(request: Request, count: int) -> list[tuple[int, ...]]:
    """Per layer, the `count` lowest-utility experts (ties: lower index first)."""
    u = utility(request)
    return [tuple(sorted(sorted(range(request.experts), key=lambda e: (row[e], e))[:count])) for row in u]


def curves(
    request: Request,
    sets: list[tuple[int, ...]],
    partitions: list[list[list[int]]],
    tokens: Tokens,
    profile: Profile,
    prices: Prices,
    limits: Limits,
    grid: np.ndarray,
) -> Curves:
    """Each layer's objective share and latencies over the memory grid; sums equal estimate()'s totals."""
    gpu_gb, cpu_gb = main_memory_gb(request, sets, limits)
    rate = prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb  # the main model's $ per second
    k, d_over_b = request.top_k, 2 * request.hidden_bytes_per_token / profile.bandwidth_bytes_s
    t_remote = np.array([profile.remote_s_per_token(y) for y in grid])  # [G]
    per_token = t_remote + d_over_b
    prefill_base = request.n_in * (profile.backbone_prefill_s_per_token + 2 * profile.swap_s_per_token)
    decode_base = profile.backbone_decode_s + 2 * profile.swap_s_per_token
    t_loc, t_inv = profile.local_expert_s_per_token, profile.invoke_s
    cost, prefill, decode = [], [], []
    for layer, (remote, parts) in enumerate(zip(sets, partitions, strict=True)):
        local = [e for e in range(request.experts) if e not in set(remote)]
        worst, expected, route = tokens.worst[layer], tokens.expected[layer], tokens.route[layer]
        local_w, local_x = worst[local].sum() * t_loc, expected[local].sum() * t_loc
        local_decode = min(k, len(local)) * t_loc
        parts = [p for p in parts if p]
        if not parts:
            p_w = np.full_like(grid, prefill_base + local_w)
            p_x = np.full_like(grid, prefill_base + local_x)
            dec = np.full_like(grid, decode_base + local_decode)
            cost.append(rate * (p_x + request.n_out * dec))
        else:
            w_max = max(worst[p].sum() for p in parts)
            x_parts = np.array([expected[p].sum() for p in parts])
            p_w = prefill_base + np.maximum(local_w, w_max * per_token + t_inv)
            p_x = prefill_base + np.maximum(local_x, x_parts.max() * per_token + t_inv)
            dec = decode_base + np.maximum(local_decode, min(k, len(remote)) * t_remote + d_over_b + t_inv)
            hits = np.array([route[p].sum() for p in parts])
            busy = x_parts.sum() * per_token + len(parts) * t_inv  # prefill
            busy = busy + request.n_out * (hits.sum() * per_token + np.minimum(1.0, hits).sum() * t_inv)
            cost.append(prices.cpu_gb_s * grid * busy + rate * (p_x + request.n_out * dec))
        prefill.append(p_w)
        decode.append(dec)
    return Curves(grid, np.array(cost), np.array(prefill), np.array(decode))


def _layer_plans(sets, partitions, grid, index) -> list[LayerPlan]:
    return [
        LayerPlan(r, float(grid[i]), tuple(tuple(p) for p in parts if p)) if r else LayerPlan()
        for r, parts, i in zip(sets, partitions, index, strict=True)
    ]


def _partitions(sets, replicas, tokens: Tokens) -> list[list[list[int]]]:
    return [
        lpt_partition({e: float(tokens.worst[layer][e]) for e in remote}, z) if remote else []
        for layer, (remote, z) in enumerate(zip(sets, replicas, strict=True))
    ]


def _better(a: tuple[bool, float], b: tuple[bool, float] | None) -> bool:
    """(feasible, cost): feasible beats infeasible, then cheaper wins."""
    return b is None or (a[0] and not b[0]) or (a[0] == b[0] and a[1] < b[1] * (1 - 1e-9))


def _plan_for_count(
    request: Request,
    count: int,
    tokens: Tokens,
    profile: Profile,
    prices: Prices,
    limits: Limits,
    grid,
    add_replicas: bool,
) -> Plan:
    sets = remote_sets(request, count)
    replicas = [
        min(
            limits.max_replicas,
            len(r),
            min_replicas_for_payload(
                tokens.worst[i][list(r)].sum(), request.hidden_bytes_per_token, limits.payload_bytes
            ),
        )
        if r
        else 0
        for i, r in enumerate(sets)
    ]

    def attempt(replicas):
        partitions = _partitions(sets, replicas, tokens)
        c = curves(request, sets, partitions, tokens, profile, prices, limits, grid)
        sizing = solve(c, request.slo_ttft_s, request.slo_tpot_s)
        rows = np.arange(len(sets))
        objective = float(c.cost[rows, sizing.index].sum())
        return (sizing.feasible, objective), partitions, sizing

    score, partitions, sizing = attempt(replicas)
    while add_replicas:  # greedy replica additions: the one layer whose extra replica helps most
        best = None
        for layer, remote in enumerate(sets):
            if not remote or replicas[layer] >= min(limits.max_replicas, len(remote)):
                continue
            trial = list(replicas)
            trial[layer] += 1
            result = attempt(trial)
            if _better(result[0], best[0] if best else None):
                best = (*result, trial)
        if best is None or not _better(best[0], score):
            break
        score, partitions, sizing, replicas = best
    layers = _layer_plans(sets, partitions, grid, sizing.index)
    gpu_gb, cpu_gb = main_memory_gb(request, sets, limits)
    est = estimate(request, layers, profile, prices, limits, tokens)
    return Plan(
        layers,
        gpu_gb,
        cpu_gb,
        est,
        sizing.feasible,
        sizing.binding,
        count,
        {"multipliers": sizing.multipliers, "replicas": replicas},
    )


def plan(
    request: Request,
    profile: Profile | None = None,
    prices: Prices | None = None,
    limits: Limits | None = None,
    counts: list[int] | None = None,
) -> Plan:
    """The cheapest feasible plan over remote counts per layer (`counts`, default 0..E in at most 17 steps)."""
    profile, prices, limits = profile or Profile(), prices or Prices(), limits or Limits()
    tokens = Tokens.of(request)
    grid = memory_grid(limits)
    e = request.experts
    counts = counts if counts is not None else sorted({round(i * e / min(e, 16)) for i in range(min(e, 16) + 1)})
    best: Plan | None = None

    def key(p: Plan) -> tuple[bool, float]:
        return p.feasible, p.estimate.cost if p.feasible else p.estimate.ttft_s

    for count in counts:  # payload-sized replicas first; the greedy additions only for the winner
        candidate = _plan_for_count(request, count, tokens, profile, prices, limits, grid, add_replicas=False)
        if best is None or _better(key(candidate), key(best)):
            best = candidate
    if best.remote_per_layer:
        refined = _plan_for_count(request, best.remote_per_layer, tokens, profile, prices, limits, grid, True)
        best = refined if _better(key(refined), key(best)) or key(refined) == key(best) else best
    convex, why = convexity(profile, limits)
    best.report.update({"convex": convex, "convexity": why, "counts_tried": counts})
    return best
