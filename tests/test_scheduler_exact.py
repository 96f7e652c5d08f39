"""The exact reference solver, and the heuristic planner's optimality gap against it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from remoe.scheduler.estimate import LayerPlan, estimate
from remoe.scheduler.exact import set_partitions, solve_exact
from remoe.scheduler.instances import GAP_LIMITS, gap, random_instance
from remoe.scheduler.problem import Prices, Request


def test_set_partitions_are_all_the_partitions_once():
    assert sum(1 for _ in set_partitions([0, 1, 2, 3], most=4)) == 15  # Bell(4)
    assert sum(1 for _ in set_partitions([0, 1, 2, 3], most=2)) == 8  # S(4,1) + S(4,2) = 1 + 7
    seen = {tuple(sorted(tuple(sorted(b)) for b in p)) for p in set_partitions([0, 1, 2], most=3)}
    assert len(seen) == 5 and all(sorted(e for b in p for e in b) == [0, 1, 2] for p in seen)


def test_the_exact_plan_is_no_worse_than_any_plan_tried_by_hand():
    request, profile = random_instance(5)  # SLOs that a split plan meets
    exact = solve_exact(request, profile, Prices(), GAP_LIMITS)
    assert exact.feasible
    assert exact.ttft_s <= request.slo_ttft_s * (1 + 1e-9) and exact.tpot_s <= request.slo_tpot_s * (1 + 1e-9)
    rng, compared = np.random.default_rng(0), 0
    for _ in range(200):  # random feasible plans never beat it
        layers = []
        for _layer in range(request.layers):
            remote = tuple(e for e in range(request.experts) if rng.random() < 0.5)
            memory = float(rng.choice(np.arange(5, 26)) / 10)
            layers.append(LayerPlan(remote, memory, (remote,)) if remote else LayerPlan())
        est = estimate(request, layers, profile, Prices(), GAP_LIMITS)
        if est.ttft_s <= request.slo_ttft_s and est.tpot_s <= request.slo_tpot_s:
            assert est.cost >= exact.cost * (1 - 1e-9)
            compared += 1
    assert compared >= 10


def test_large_instances_are_refused():
    _, profile = random_instance(0)
    large = Request(
        np.full((4, 8), 1 / 8),
        n_in=32,
        n_out=8,
        top_k=2,
        expert_bytes=2**20,
        hidden_bytes_per_token=1024,
        backbone_bytes=2**20,
    )
    with pytest.raises(ValueError, match="small instances"):
        solve_exact(large, profile, Prices(), GAP_LIMITS)


def test_the_heuristic_is_within_5_percent_of_the_optimum_on_average():
    results = [gap(seed) for seed in range(30)]
    solvable = [r for r in results if r.exact_feasible]
    assert len(solvable) >= 10  # the SLOs bind sometimes, not always
    assert all(r.heuristic_feasible for r in solvable)  # never gives up where a plan exists
    gaps = np.array([r.gap for r in solvable])
    assert (gaps >= -1e-9).all()  # the exact solver is the optimum
    assert gaps.mean() < 0.05 and math.isfinite(gaps.max())
