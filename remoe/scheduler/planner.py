"""The cheapest plan that meets the SLO: which experts leave the main model, the functions' memory and
replicas, and the main model's memory. The paper's heuristic, as pure functions over a `Request`:

1. Remote selection: utility u = n_in s + n_out top_k s per expert; for each remote count (0..E in at most 17
   steps) the lowest-utility experts of every layer go to that layer's function (ties by expert index).
2. Replicas: enough for the payload limit, experts spread by LPT (replicas.py).
3. Memory: the Lagrangian dual over layers (sizing.py), on the 100 MB grid.
4. Main memory: the smallest spec that holds the backbone and KV cache (GPU) and the local experts (CPU).
The best count is then refined: replicas added greedily by cost potential (while the SLO fails or it pays,
up to z_max), and one pass of per-layer count moves (layers may end with different remote counts; the paper
keeps one ratio). Refinement re-solves are capped (REFINEMENT_SOLVES). The cheapest feasible plan wins; when
none is feasible, the least violating one is returned with feasible=False. L = MoE layers, E = experts per
layer, G = memory grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remoe.scheduler.estimate import Estimate, LayerPlan, Tokens, estimate, main_memory_gb
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.replicas import lpt_partition, min_replicas_for_payload
from remoe.scheduler.sizing import Curves, Sizing, convexity, memory_grid, solve
from remoe.scheduler.terms import PartStats, single_replica_stats, stats_array, terms


@dataclass(frozen=True, slots=True)
class Plan:
    layers: list[LayerPlan]
    main_gpu_gb: float
    main_cpu_gb: float
    estimate: Estimate
    feasible: bool
    binding: str  # which SLO constraint's multiplier is positive: "ttft", "tpot", "both" or "none"
    report: dict = field(default_factory=dict)

    @property
    def remote_counts(self) -> list[int]:
        return [len(layer.remote) for layer in self.layers]


def utility(request: Request) -> np.ndarray:
    """[L, E] u = n_in s + n_out top_k s: the tokens an expert is expected to process."""
    return request.n_in * request.frequency + request.n_out * request.top_k * request.frequency


def remote_sets(request: Request, count: int, order: np.ndarray | None = None) -> list[tuple[int, ...]]:
    """Per layer, the `count` lowest-utility experts (ties: lower index first). `order`: utility_order()."""
    order = utility_order(request) if order is None else order
    return [tuple(sorted(row)) for row in order[:, :count].tolist()]


def utility_order(request: Request) -> np.ndarray:
    """[L, E] experts by rising utility, ties by index."""
    return np.argsort(utility(request), axis=1, kind="stable")


def local_mask(request: Request, sets: list[tuple[int, ...]]) -> np.ndarray:
    """[L, E] True where the expert stays on the main model."""
    mask = np.ones((request.layers, request.experts), dtype=bool)
    for layer, remote in enumerate(sets):
        mask[layer, list(remote)] = False
    return mask


def main_rate(request: Request, sets: list[tuple[int, ...]], prices: Prices, limits: Limits) -> float:
    """The main model's $ per second with these experts remote."""
    gpu_gb, cpu_gb = main_memory_gb(request, sets, limits)
    return prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb


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
    stats = stats_array([PartStats.of(layer, parts, tokens) for layer, parts in enumerate(partitions)])
    t = terms(request, np.arange(request.layers), local_mask(request, sets), stats, tokens, profile, prices, grid)
    return Curves(grid, t.cost(main_rate(request, sets, prices, limits)), t.prefill, t.decode)


def _layer_plans(sets, partitions, grid, index) -> list[LayerPlan]:
    return [
        LayerPlan(r, float(grid[i]), tuple(tuple(p) for p in parts if p)) if r else LayerPlan()
        for r, parts, i in zip(sets, partitions, index, strict=True)
    ]


def _partition(remote: tuple[int, ...], replicas: int, worst: np.ndarray) -> list[list[int]]:
    if not remote:
        return []
    if replicas == 1:
        return [list(remote)]
    return lpt_partition({e: float(worst[e]) for e in remote}, replicas)


def _better(a: tuple[bool, float], b: tuple[bool, float] | None) -> bool:
    """(feasible, cost): feasible beats infeasible, then cheaper wins."""
    return b is None or (a[0] and not b[0]) or (a[0] == b[0] and a[1] < b[1] * (1 - 1e-9))


# Re-solves the refinement (replica additions, per-layer moves) may spend after the sweep over counts: keeps
# planning a 26 x 64 model near 30-50 ms; small instances never reach it.
REFINEMENT_SOLVES = 16
REFINEMENT_CELLS = 16_000

Row = tuple[list[list[int]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # parts, remote $, main s, p, d


class _Layers:
    """Rows over the memory grid per (layer, remote set, replicas), each computed once. The main model's rate
    depends on every layer's local experts, so rows keep remote $ and main-model seconds apart."""

    def __init__(self, request, tokens, profile, prices, limits, grid) -> None:
        self.request, self.tokens, self.grid, self.limits = request, tokens, grid, limits
        self.profile, self.prices = profile, prices
        self.rows: dict[tuple[int, tuple[int, ...], int], Row] = {}

    def fill(self, sets: list[tuple[int, ...]], replicas: list[int]) -> None:
        """Every layer's row in one vectorised pass."""
        parts = [_partition(r, z, self.tokens.worst[i]) for i, (r, z) in enumerate(zip(sets, replicas, strict=True))]
        layers, local = np.arange(len(sets)), local_mask(self.request, sets)
        stats = single_replica_stats(layers, local, self.tokens)
        for i, z in enumerate(replicas):
            if z > 1:
                stats[i] = stats_array([PartStats.of(i, parts[i], self.tokens)])[0]
        t = terms(self.request, layers, local, stats, self.tokens, self.profile, self.prices, self.grid)
        for i, (r, z) in enumerate(zip(sets, replicas, strict=True)):
            self.rows[(i, r, z)] = (parts[i], t.remote_cost[i], t.main_s[i], t.prefill[i], t.decode[i])

    def row(self, layer: int, remote: tuple[int, ...], replicas: int) -> Row:
        key = (layer, remote, replicas)
        if key not in self.rows:
            parts = _partition(remote, replicas, self.tokens.worst[layer])
            local = np.ones((1, self.request.experts), dtype=bool)
            local[0, list(remote)] = False
            stats = stats_array([PartStats.of(layer, parts, self.tokens)])
            t = terms(self.request, np.array([layer]), local, stats, self.tokens, self.profile, self.prices, self.grid)
            self.rows[key] = (parts, t.remote_cost[0], t.main_s[0], t.prefill[0], t.decode[0])
        return self.rows[key]

    def curves(self, sets: list[tuple[int, ...]], replicas: list[int]) -> tuple[list[list[list[int]]], Curves]:
        rows = [self.row(layer, r, z) for layer, (r, z) in enumerate(zip(sets, replicas, strict=True))]
        rate = main_rate(self.request, sets, self.prices, self.limits)
        remote_cost, main_s, prefill, decode = (np.stack([r[i] for r in rows]) for i in (1, 2, 3, 4))
        return [r[0] for r in rows], Curves(self.grid, remote_cost + rate * main_s, prefill, decode)

    def cost_row(self, layer: int, remote: tuple[int, ...], replicas: int, rate: float) -> tuple[np.ndarray, ...]:
        _, remote_cost, main_s, prefill, decode = self.row(layer, remote, replicas)
        return remote_cost + rate * main_s, prefill, decode


@dataclass(slots=True)
class _Candidate:
    count: int  # the remote count the search started from (layers may differ after refinement)
    sets: list[tuple[int, ...]]
    partitions: list[list[list[int]]]
    sizing: Sizing
    replicas: list[int]
    score: tuple[bool, float]  # (feasible, cost when feasible else the SLO violation)


class _Search:
    def __init__(self, request, tokens, profile, prices, limits, grid) -> None:
        self.request, self.tokens, self.limits = request, tokens, limits
        self.layers = _Layers(request, tokens, profile, prices, limits, grid)
        self.order = utility_order(request)
        self.rows = np.arange(request.layers)
        # Re-solves cost about L x G each: small problems may afford many more than a 26 x 64 model.
        self.refinements_left = max(REFINEMENT_SOLVES, REFINEMENT_CELLS // (request.layers * len(grid)))

    @property
    def exhausted(self) -> bool:
        return self.refinements_left <= 0

    def payload_replicas(self, layer: int, remote: tuple[int, ...]) -> int:
        if not remote:
            return 0
        tokens = self.tokens.worst[layer][list(remote)].sum()
        need = min_replicas_for_payload(tokens, self.request.hidden_bytes_per_token, self.limits.payload_bytes)
        return min(self.limits.max_replicas, len(remote), need)

    def attempt(self, count: int, sets: list[tuple[int, ...]], replicas: list[int]) -> _Candidate:
        partitions, c = self.layers.curves(sets, replicas)
        request, rows = self.request, self.rows
        sizing = solve(c, request.slo_ttft_s, request.slo_tpot_s)
        if sizing.feasible:
            score = float(c.cost[rows, sizing.index].sum())
        else:
            ttft, tpot = c.prefill[rows, sizing.index].sum(), c.decode[rows, sizing.index].sum()
            score = float(ttft / request.slo_ttft_s + tpot / request.slo_tpot_s)
        return _Candidate(count, sets, partitions, sizing, replicas, (sizing.feasible, score))

    def at_count(self, count: int) -> _Candidate:
        """Every layer's `count` lowest-utility experts remote, replicas just enough for the payload limit."""
        sets = remote_sets(self.request, count, self.order)
        replicas = [self.payload_replicas(i, r) for i, r in enumerate(sets)]
        self.layers.fill(sets, replicas)
        return self.attempt(count, sets, replicas)

    def add_replicas(self, best: _Candidate) -> _Candidate:
        """Greedy replica additions by the paper's cost potential: at the current multipliers, how much one more
        replica lowers each layer's own Lagrangian; the most promising layers are re-solved in turn."""
        rate = main_rate(self.request, best.sets, self.layers.prices, self.limits)
        request = self.request
        for _ in range(2 * request.layers):
            lam, mu = best.sizing.multipliers
            if not best.score[0]:  # infeasible: what counts is how much of the violated latencies a replica buys
                _, c = self.layers.curves(best.sets, best.replicas)
                ttft, tpot = (float(x[self.rows, best.sizing.index].sum()) for x in (c.prefill, c.decode))
                lam = 1 / request.slo_ttft_s if ttft > request.slo_ttft_s else 0.0
                mu = 1 / request.slo_tpot_s if tpot > request.slo_tpot_s else 0.0
            potential = []
            for layer, remote in enumerate(best.sets):
                z = best.replicas[layer]
                if not remote or z >= min(self.limits.max_replicas, len(remote)):
                    continue
                cost, prefill, decode = self.layers.cost_row(layer, remote, z, rate)
                cost2, prefill2, decode2 = self.layers.cost_row(layer, remote, z + 1, rate)
                if best.score[0]:
                    drop = (cost + lam * prefill + mu * decode).min() - (cost2 + lam * prefill2 + mu * decode2).min()
                else:
                    drop = (lam * prefill + mu * decode).min() - (lam * prefill2 + mu * decode2).min()
                if drop > 0:
                    potential.append((drop, layer))
            for _, layer in sorted(potential, reverse=True)[:3]:
                if self.exhausted:
                    return best
                self.refinements_left -= 1
                trial = self.attempt(best.count, best.sets, [z + (i == layer) for i, z in enumerate(best.replicas)])
                if _better(trial.score, best.score):
                    best = trial
                    break
            else:
                return best
        return best

    def move_layers(self, best: _Candidate, step: int) -> _Candidate:
        """Passes over the layers while one improves the plan: a layer sends `step` more experts out, brings
        `step` back, keeps all of them, or sends all out, when that alone makes the plan cheaper (or feasible;
        a tight TPOT can want one layer wholly local while a tight TTFT wants the next one remote). The paper
        keeps one remote ratio for all layers."""
        experts = self.request.experts
        improved = True
        while improved and not self.exhausted:
            improved = False
            for layer in range(self.request.layers):
                now = len(best.sets[layer])
                for count in dict.fromkeys((now + step, now - step, 0, experts)):
                    if count == now or not 0 <= count <= experts or self.exhausted:
                        continue
                    self.refinements_left -= 1
                    remote = tuple(sorted(self.order[layer, :count].tolist()))
                    sets = [remote if i == layer else r for i, r in enumerate(best.sets)]
                    z = max(self.payload_replicas(layer, remote), min(best.replicas[layer], count))
                    replicas = [z if i == layer else r for i, r in enumerate(best.replicas)]
                    trial = self.attempt(best.count, sets, replicas)
                    if _better(trial.score, best.score):
                        best, improved = trial, True
                        break
        return best


def _plan(request, candidate: _Candidate, tokens, profile, prices, limits, grid) -> Plan:
    layers = _layer_plans(candidate.sets, candidate.partitions, grid, candidate.sizing.index)
    gpu_gb, cpu_gb = main_memory_gb(request, candidate.sets, limits)
    return Plan(
        layers,
        gpu_gb,
        cpu_gb,
        estimate(request, layers, profile, prices, limits, tokens),
        candidate.sizing.feasible,
        candidate.sizing.binding,
        {"multipliers": candidate.sizing.multipliers, "replicas": candidate.replicas},
    )


def plan(
    request: Request,
    profile: Profile | None = None,
    prices: Prices | None = None,
    limits: Limits | None = None,
    counts: list[int] | None = None,
    per_layer_moves: bool = True,
) -> Plan:
    """The cheapest feasible plan: the remote count per layer (`counts`, default 0..E in at most 17 steps)
    with replicas for the payload limit; then, for the winner, greedy replica additions and per-layer count
    moves (off: every layer keeps the count). While nothing meets the SLO, the next counts get the same
    treatment (at most 4)."""
    profile, prices, limits = profile or Profile(), prices or Prices(), limits or Limits()
    tokens = Tokens.of(request)
    grid = memory_grid(limits)
    e = request.experts
    step = max(1, e // 16)
    counts = counts if counts is not None else list(range(0, e + 1, step)) + ([e] if e % step else [])
    search = _Search(request, tokens, profile, prices, limits, grid)
    candidates = sorted(
        (search.at_count(count) for count in counts), key=lambda c: (not c.score[0], c.score[1], c.count)
    )
    best = candidates[0]
    for candidate in candidates[:4]:
        refined = search.add_replicas(candidate)
        if per_layer_moves:
            refined = search.add_replicas(search.move_layers(refined, step))
        best = refined if _better(refined.score, best.score) else best
        if best.score[0]:
            break
    result = _plan(request, best, tokens, profile, prices, limits, grid)
    convex, why = convexity(profile, limits)
    result.report.update({"convex": convex, "convexity": why, "counts_tried": counts})
    return result
