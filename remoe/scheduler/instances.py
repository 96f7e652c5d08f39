"""Random small scheduling instances with SLOs that bind, for the heuristic's optimality gap (tests and
bench/scheduler.py draw the same ones)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remoe.scheduler.exact import solve_exact
from remoe.scheduler.planner import plan
from remoe.scheduler.problem import Limits, Prices, Profile, Request

GAP_LIMITS = Limits(remote_memory_gb=(0.5, 2.5), main_memory_gb=(0.1, 40.0), max_replicas=3)


@dataclass(frozen=True, slots=True)
class GapResult:
    seed: int
    exact_feasible: bool
    heuristic_feasible: bool
    exact_cost: float
    heuristic_cost: float
    exact_remote: list[int]  # remote experts per layer
    heuristic_remote: list[int]

    @property
    def gap(self) -> float:
        """Heuristic cost over the optimum, minus 1 (inf when only the exact solver met the SLO)."""
        if not self.exact_feasible:
            return float("nan")
        return self.heuristic_cost / self.exact_cost - 1 if self.heuristic_feasible else float("inf")


def random_instance(seed: int) -> tuple[Request, Profile]:
    """2 layers of 3-4 experts; SLOs drawn around the unconstrained optimum's latencies, so some bind."""
    rng = np.random.default_rng(seed)
    experts = int(rng.integers(3, 5))
    profile = Profile(
        remote_fit=(float(rng.uniform(1e-3, 8e-3)), 2.44, float(rng.uniform(1e-4, 4e-4))),
        local_expert_s_per_token=float(rng.uniform(2e-4, 8e-4)),
        invoke_s=float(rng.uniform(1e-3, 5e-3)),
    )
    fields = dict(
        frequency=rng.dirichlet(np.ones(experts) * 0.5, size=2),
        n_in=int(rng.integers(16, 256)),
        n_out=int(rng.integers(1, 200)),
        top_k=int(rng.integers(1, 3)),
        expert_bytes=int(rng.integers(50, 400)) * 2**20,
        hidden_bytes_per_token=4096,
        backbone_bytes=2**30,
    )
    free = solve_exact(Request(**fields), profile, Prices(), GAP_LIMITS)
    slo_ttft, slo_tpot = free.ttft_s * rng.uniform(0.7, 1.3), free.tpot_s * rng.uniform(0.8, 1.3)
    return Request(**fields, slo_ttft_s=slo_ttft, slo_tpot_s=slo_tpot), profile


def gap(seed: int) -> GapResult:
    request, profile = random_instance(seed)
    exact = solve_exact(request, profile, Prices(), GAP_LIMITS)
    heuristic = plan(request, profile, Prices(), GAP_LIMITS)
    return GapResult(
        seed,
        exact.feasible,
        heuristic.feasible,
        exact.cost,
        heuristic.estimate.cost,
        [len(layer.remote) for layer in exact.layers],
        heuristic.remote_counts,
    )
