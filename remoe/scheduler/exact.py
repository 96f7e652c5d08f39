"""The exact optimum of the scheduling problem on small instances, by exhaustive search: the reference the
heuristic planner's optimality gap is measured against.

Per layer every remote set (any subset, not only the lowest-utility ones), every partition of it into at
most z_max replicas, and every memory size on the grid; across layers every combination, with the main
model's memory (and so its price per second) set by the total of local experts. Same cost model as the
planner (terms.py), so a gap is the heuristic's, not the model's. Feasible for L <= 2 layers of E <= 5
experts; larger instances are refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from remoe.scheduler.estimate import LayerPlan, Tokens, estimate, main_memory_gb
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.sizing import memory_grid
from remoe.scheduler.terms import PartStats, stats_array, terms

MAX_STATES = 20_000_000  # (configs x grid) ** layers evaluated at once


@dataclass(frozen=True, slots=True)
class ExactPlan:
    layers: list[LayerPlan]
    cost: float
    ttft_s: float
    tpot_s: float
    feasible: bool


def set_partitions(items: list[int], most: int) -> Iterator[list[list[int]]]:
    """Every partition of `items` into at most `most` non-empty blocks (blocks in first-item order)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest, most):
        for i in range(len(partition)):  # `first` joins an existing block
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1 :]]
        if len(partition) < most:  # or starts its own
            yield [[first], *partition]


def _layer_configs(request: Request, layer: int, limits: Limits) -> list[tuple[tuple[int, ...], list[list[int]]]]:
    configs: list[tuple[tuple[int, ...], list[list[int]]]] = [((), [])]
    for size in range(1, request.experts + 1):
        for remote in itertools.combinations(range(request.experts), size):
            configs += [(remote, parts) for parts in set_partitions(list(remote), limits.max_replicas)]
    return configs


def solve_exact(request: Request, profile: Profile, prices: Prices, limits: Limits) -> ExactPlan:
    tokens = Tokens.of(request)
    grid = memory_grid(limits)
    configs = [_layer_configs(request, layer, limits) for layer in range(request.layers)]
    states = float(np.prod([len(c) * len(grid) for c in configs]))
    if states > MAX_STATES:
        raise ValueError(f"{states:.3g} states: the exact solver is for small instances (L <= 2, E <= 5)")
    # Per layer: rows [C, G] of each term, and each config's local-expert count [C].
    tables = []
    for layer, layer_configs in enumerate(configs):
        local = np.ones((len(layer_configs), request.experts), dtype=bool)
        for i, (remote, _) in enumerate(layer_configs):
            local[i, list(remote)] = False
        stats = stats_array([PartStats.of(layer, parts, tokens) for _, parts in layer_configs])
        t = terms(request, np.full(len(layer_configs), layer), local, stats, tokens, profile, prices, grid)
        tables.append((t, local.sum(1)))
    # Flatten (config, memory) per layer and add layers one by one: arrays over the product of states.
    remote_cost, main_s, prefill, decode, n_local = (np.zeros(1) for _ in range(5))
    for t, local_count in tables:

        def grow(total: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return (total[:, None] + rows.reshape(-1)[None, :]).reshape(-1)

        remote_cost, main_s = grow(remote_cost, t.remote_cost), grow(main_s, t.main_s)
        prefill, decode = grow(prefill, t.prefill), grow(decode, t.decode)
        n_local = grow(n_local, np.repeat(local_count, len(grid)).astype(np.float64))
    rates = np.array([_rate(request, int(n), prices, limits) for n in range(request.layers * request.experts + 1)])
    cost = remote_cost + rates[n_local.astype(int)] * main_s
    feasible = (prefill <= request.slo_ttft_s * (1 + 1e-9)) & (decode <= request.slo_tpot_s * (1 + 1e-9))
    if feasible.any():
        best = int(np.argmin(np.where(feasible, cost, np.inf)))
    else:
        best = int(np.argmin(prefill / request.slo_ttft_s + decode / request.slo_tpot_s))
    # Decode the flat index into (config, memory) per layer, last layer fastest.
    layers: list[LayerPlan] = []
    rest = best
    for layer_configs in reversed(configs):
        rest, position = divmod(rest, len(layer_configs) * len(grid))
        (remote, parts), g = layer_configs[position // len(grid)], position % len(grid)
        layers.append(LayerPlan(remote, float(grid[g]), tuple(tuple(p) for p in parts)) if remote else LayerPlan())
    layers.reverse()
    est = estimate(request, layers, profile, prices, limits, tokens)
    return ExactPlan(layers, est.cost, est.ttft_s, est.tpot_s, bool(feasible[best]))


def _rate(request: Request, local_experts: int, prices: Prices, limits: Limits) -> float:
    """The main model's $ per second with this many local experts in total (only the count matters)."""
    per_layer = [request.experts] * request.layers
    remote, left = [], local_experts
    for e in per_layer:  # any split with this total gives the same memory
        keep = min(e, left)
        left -= keep
        remote.append(tuple(range(e - keep)))
    gpu_gb, cpu_gb = main_memory_gb(request, remote, limits)
    return prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb
