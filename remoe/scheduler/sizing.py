"""Memory sizing of the remote functions: the relaxed per-layer problem solved through its Lagrangian dual.

For a fixed remote set and replica partition, layer l's share of the objective g_l(y) (its functions'
memory x time plus the main model's cost for the time the layer takes) and its latencies p_l(y) (prefill,
worst case) and d_l(y) (one decode token) depend only on its own memory y_l. The constraints
sum_l p_l <= TTFT SLO and sum_l d_l <= TPOT SLO couple the layers; with multipliers (lambda, mu) the
Lagrangian separates (Theorem 3), so each layer minimises g_l + lambda p_l + mu d_l alone, over the
memory grid (100 MB steps, so the per-layer minimum is exact). The multipliers are searched on a log grid,
both at once, and the cheapest feasible primal plan they produce is kept.

Convexity (Theorem 2): with T(y) = th1 exp(-th2 y) + th3, a function's memory x time y T(y) has second
derivative th1 th2 exp(-th2 y) (th2 y - 2), so it is convex only where y >= 2 / th2. `convexity` says whether
that holds on the whole memory range; when it does not, the grid search still finds each layer's exact
minimum, but the dual's optimum may leave a gap to the primal one (measured against exact.py in tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remoe.scheduler.problem import Limits, Profile

MULTIPLIERS = 12  # per multiplier and search round: 0 and 11 log-spaced prices


@dataclass(frozen=True, slots=True)
class Curves:
    """Per layer over the memory grid: objective share and latencies. Shapes [L, G]."""

    grid: np.ndarray  # [G] memory sizes (GB)
    cost: np.ndarray
    prefill: np.ndarray
    decode: np.ndarray


@dataclass(frozen=True, slots=True)
class Sizing:
    index: np.ndarray  # [L] chosen grid position per layer
    feasible: bool
    multipliers: tuple[float, float]  # (lambda, mu) at the solution
    binding: str  # "ttft", "tpot", "both" or "none"


def memory_grid(limits: Limits) -> np.ndarray:
    low, high = limits.remote_memory_gb
    steps = int(round((high - low) / limits.memory_step_gb))
    return np.round(low + limits.memory_step_gb * np.arange(steps + 1), 6)


def convexity(profile: Profile, limits: Limits) -> tuple[bool, str]:
    _, th2, _ = profile.remote_fit
    low = limits.remote_memory_gb[0]
    threshold = 2 / th2 if th2 > 0 else float("inf")
    if low >= threshold:
        return True, f"y T(y) is convex on the whole range (y >= {low} GB >= 2/th2 = {threshold:.2f} GB)"
    return False, (
        f"y T(y) is not convex below 2/th2 = {threshold:.2f} GB (range starts at {low} GB): per-layer minima are "
        "still exact on the grid, the dual may leave a gap"
    )


def _at(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[L, G] values at each layer's chosen grid position, summed over layers: index [..., L] -> [...]"""
    return values[np.arange(values.shape[0]), index].sum(-1)


_UNIT = np.geomspace(1e-9, 1.0, MULTIPLIERS - 1)  # log-spaced steps, scaled per call (geomspace is slow)
_STEPS = np.linspace(0.0, 1.0, MULTIPLIERS)
_FINE_FROM_ZERO = 1e-3 ** (1.0 - np.linspace(0.0, 1.0, MULTIPLIERS - 1))  # 1e-3 .. 1, log-spaced


def _multipliers(latency: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """0 and log-spaced prices of latency, up to one that outweighs every cost difference."""
    span_latency = max(float(np.ptp(latency, axis=1).max()), 1e-12)
    top = 1e3 * (float(np.ptp(cost, axis=1).max()) + 1e-12) / span_latency
    return np.concatenate([[0.0], top * _UNIT])


def _around(values: np.ndarray, i: int) -> np.ndarray:
    """A finer grid between the neighbours of values[i]."""
    upper = values[i + 1] if i + 1 < len(values) else values[i] * 10
    if i == 0 or values[i - 1] == 0:
        return np.concatenate([[0.0], upper * _FINE_FROM_ZERO])
    lower = values[i - 1]
    return lower * (upper / lower) ** _STEPS


def _search(curves: Curves, lam: np.ndarray, mu: np.ndarray, slo_ttft: float, slo_tpot: float):
    """Every (mu, lambda) pair at once: each layer's minimiser, then the cheapest feasible primal plan (or the
    least violating one). Returns (index [L], feasible, cost, violation, i, j)."""
    lagrangian = (
        curves.cost[None, None]
        + lam[None, :, None, None] * curves.prefill[None, None]
        + mu[:, None, None, None] * curves.decode[None, None]
    )  # [M(mu), M(lam), L, G]
    index = np.argmin(lagrangian, axis=-1)  # [M, M, L]
    ttft, tpot, cost = _at(curves.prefill, index), _at(curves.decode, index), _at(curves.cost, index)  # [M, M]
    feasible = (ttft <= slo_ttft * (1 + 1e-9)) & (tpot <= slo_tpot * (1 + 1e-9))
    violation = ttft / slo_ttft + tpot / slo_tpot
    if feasible.any():
        i, j = np.unravel_index(np.argmin(np.where(feasible, cost, np.inf)), cost.shape)
    else:
        i, j = np.unravel_index(np.argmin(violation), cost.shape)
    return index[i, j], bool(feasible[i, j]), float(cost[i, j]), float(violation[i, j]), int(i), int(j)


def _sizing(index, feasible, lam: float, mu: float) -> Sizing:
    binding = {(True, False): "ttft", (False, True): "tpot", (True, True): "both"}.get((lam > 0, mu > 0), "none")
    return Sizing(index, feasible, (lam, mu), binding)


def solve(curves: Curves, slo_ttft: float, slo_tpot: float) -> Sizing:
    """The cheapest memory per layer that meets both SLOs.

    When every layer's own cheapest memory already meets the SLO, that is the optimum (lambda = mu = 0).
    Otherwise a coarse log grid of (lambda, mu) finds the region and a finer grid around the best pair
    refines it; of all primal plans the pairs produce, the cheapest feasible one wins, or, when none is
    feasible, the one with the smallest sum of the two latencies' shares of their SLOs."""
    free = np.argmin(curves.cost, axis=-1)  # [L]
    rows = np.arange(len(free))
    if curves.prefill[rows, free].sum() <= slo_ttft * (1 + 1e-9) and curves.decode[rows, free].sum() <= slo_tpot * (
        1 + 1e-9
    ):
        return _sizing(free, True, 0.0, 0.0)
    lam, mu = _multipliers(curves.prefill, curves.cost), _multipliers(curves.decode, curves.cost)
    coarse = _search(curves, lam, mu, slo_ttft, slo_tpot)
    lam2, mu2 = _around(lam, coarse[5]), _around(mu, coarse[4])
    fine = _search(curves, lam2, mu2, slo_ttft, slo_tpot)
    better = (
        (fine[1] and not coarse[1])
        or (fine[1] and fine[2] < coarse[2])
        or (not fine[1] and not coarse[1] and fine[3] < coarse[3])
    )
    index, feasible, _, _, i, j = fine if better else coarse
    return _sizing(index, feasible, float((lam2 if better else lam)[j]), float((mu2 if better else mu)[i]))
