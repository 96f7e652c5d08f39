"""The planner: plans meet their SLOs under the model, cost what the model says, and say when they cannot."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from remoe.scheduler.estimate import Tokens, estimate
from remoe.scheduler.planner import _layer_plans, curves, plan, remote_sets
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.replicas import lpt_partition
from remoe.scheduler.sizing import convexity, memory_grid

# Functions cheaper per expert than the main model's CPU memory, so that moving experts out can pay; a decode
# step that grows with its context.
PROFILE = Profile(
    remote_fit=(4e-3, 2.44, 2e-4),
    local_expert_s_per_token=4e-4,
    dispatch_s=3e-4,
    expert_call_s=1e-4,
    backbone_decode_s_per_context_token=2e-6,
)
LIMITS = Limits(remote_memory_gb=(0.5, 3.0), main_memory_gb=(0.1, 40.0))


def _request(seed: int, slo_ttft: float = 10.0, slo_tpot: float = 1.0, experts: int = 6) -> Request:
    rng = np.random.default_rng(seed)
    return Request(
        rng.dirichlet(np.ones(experts) * 0.5, size=3),
        n_in=int(rng.integers(16, 256)),
        n_out=int(rng.integers(1, 200)),
        top_k=2,
        expert_bytes=int(rng.integers(50, 400)) * 2**20,
        hidden_bytes_per_token=4096,
        backbone_bytes=2**30,
        slo_ttft_s=slo_ttft,
        slo_tpot_s=slo_tpot,
    )


@pytest.mark.parametrize("host_cores", [0, 2])  # functions on a platform's CPUs, or sharing a 2-core host
def test_the_planner_objective_is_the_cost_model(host_cores):
    profile = replace(PROFILE, function_host_cores=host_cores)
    request = _request(0)
    tokens = Tokens.of(request)
    sets = remote_sets(request, 3)
    partitions = [lpt_partition({e: float(tokens.worst[i][e]) for e in r}, 2) for i, r in enumerate(sets)]
    grid = memory_grid(LIMITS)
    c = curves(request, sets, partitions, tokens, profile, Prices(), LIMITS, grid)
    index = np.array([3, 10, 17])
    est = estimate(request, _layer_plans(sets, partitions, grid, index), profile, Prices(), LIMITS, tokens)
    rows = np.arange(3)
    assert est.cost == pytest.approx(float(c.cost[rows, index].sum()), rel=1e-9)
    assert est.ttft_s == pytest.approx(float(c.prefill[rows, index].sum()), rel=1e-9)
    assert est.tpot_s == pytest.approx(float(c.decode[rows, index].sum()), rel=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_feasible_plans_meet_their_slo_under_the_model(seed):
    loose = plan(_request(seed), PROFILE, Prices(), LIMITS)
    assert loose.feasible
    # Tighten the TTFT SLO to just below the loose plan's: the new plan meets it, and costs no less.
    target = 0.9 * loose.estimate.ttft_s
    tight = plan(_request(seed, slo_ttft=target), PROFILE, Prices(), LIMITS)
    assert tight.feasible  # more memory or replicas can always buy 10% here
    assert tight.estimate.ttft_s <= target * (1 + 1e-9) and tight.estimate.tpot_s <= 1.0
    assert tight.estimate.cost >= loose.estimate.cost * (1 - 1e-9)
    for layer in tight.layers:
        assert sorted(e for part in layer.replicas for e in part) == list(layer.remote)
        if layer.remote:
            assert LIMITS.remote_memory_gb[0] <= layer.memory_gb <= LIMITS.remote_memory_gb[1]


def test_an_impossible_slo_is_reported_not_hidden():
    result = plan(_request(1, slo_ttft=1e-6), PROFILE, Prices(), LIMITS)
    assert not result.feasible
    assert result.estimate.ttft_s > 1e-6


def test_convexity_is_checked_against_the_fit():
    assert convexity(Profile(remote_fit=(1.0, 2.44, 0.1)), Limits(remote_memory_gb=(1.0, 5.0)))[0]
    convex, why = convexity(Profile(remote_fit=(1.0, 0.5, 0.1)), Limits(remote_memory_gb=(1.0, 5.0)))
    assert not convex and "4.00 GB" in why
