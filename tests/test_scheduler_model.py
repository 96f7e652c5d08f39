"""The scheduler's building blocks: MMP's worst case, LPT replicas, and the latency/cost model."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binom

from remoe.scheduler.estimate import LayerPlan, Tokens, estimate, main_memory_gb
from remoe.scheduler.mmp import paper_bound_confidence, paper_worst_case, route_probability, worst_case_tokens
from remoe.scheduler.problem import Limits, Prices, Profile, Request
from remoe.scheduler.replicas import lpt_partition, makespan, min_replicas_for_payload


def test_the_papers_bound_is_guaranteed_at_78_percent_and_over_provisions_in_practice():
    assert paper_bound_confidence() == pytest.approx(0.7769, abs=1e-4)
    n, k_experts = 200, 8
    bound = paper_worst_case(n, k_experts)  # 37.2 tokens
    coverage = binom.cdf(math.floor(bound), n, 1 / k_experts)
    assert coverage >= paper_bound_confidence()  # Hoeffding is a guarantee...
    assert coverage > 0.99  # ...and loose: the binomial puts 99.4% below it
    exact = worst_case_tokens(n, np.array([1 / k_experts]), 0.95)[0]
    assert exact < bound  # the exact 95% quantile asks for less memory and time than the paper's bound


def test_worst_case_tokens_is_the_exact_binomial_quantile():
    probability = route_probability(np.array([0.5, 0.25, 0.25, 0.0]), top_k=2)  # [1.0, 0.5, 0.5, 0.0]
    worst = worst_case_tokens(100, probability, 0.95)
    assert worst[0] == 100 and worst[3] == 0
    assert binom.cdf(worst[1], 100, 0.5) >= 0.95 > binom.cdf(worst[1] - 1, 100, 0.5)
    with pytest.raises(ValueError):
        worst_case_tokens(10, probability, 1.0)


def test_lpt_balances_deterministically_and_within_its_bound():
    loads = {0: 7.0, 1: 5.0, 2: 4.0, 3: 4.0, 4: 3.0, 5: 3.0}
    parts = lpt_partition(loads, 2)
    assert parts == lpt_partition(dict(reversed(list(loads.items()))), 2)  # input order does not matter
    assert sorted(e for p in parts for e in p) == list(loads)
    optimum = 13.0  # {7, 3, 3} / {5, 4, 4}
    assert makespan(parts, loads) <= (4 / 3 - 1 / 6) * optimum
    assert lpt_partition({0: 1.0}, 3) == [[0], [], []]
    with pytest.raises(ValueError):
        lpt_partition(loads, 0)


def test_payload_limit_sets_the_minimum_replicas():
    assert min_replicas_for_payload(100, 4096, 6 * 2**20) == 1
    assert min_replicas_for_payload(4000, 4096, 6 * 2**20) == 3  # 16.4 MB over 6 MiB


def _request(**overrides) -> Request:
    fields = dict(
        frequency=np.array([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]),
        n_in=64,
        n_out=16,
        top_k=2,
        expert_bytes=50 * 2**20,
        hidden_bytes_per_token=2048,
        backbone_bytes=2**30,
    )
    return Request(**{**fields, **overrides})


def test_requests_are_validated():
    with pytest.raises(ValueError, match="sum to 1"):
        _request(frequency=np.array([[0.5, 0.2, 0.2, 0.2]]))
    with pytest.raises(ValueError, match="top_k"):
        _request(top_k=5)


def test_moving_experts_out_lowers_main_memory_and_costs_remote_time():
    request, prices, limits = _request(), Prices(), Limits(main_memory_gb=(0.1, 40))
    profile = Profile(remote_fit=(0.02, 1.0, 0.002))  # functions slower than the local CPU: they set TTFT
    local = [LayerPlan(), LayerPlan()]
    remote = [LayerPlan((3,), 2.0, ((3,),)), LayerPlan((2, 3), 2.0, ((2,), (3,)))]
    assert main_memory_gb(request, [(), ()], limits)[1] == pytest.approx(0.4)  # 8 experts x 50 MiB
    assert main_memory_gb(request, [p.remote for p in remote], limits)[1] == pytest.approx(0.3)
    all_local, split = (
        estimate(request, local, profile, prices, limits),
        estimate(request, remote, profile, prices, limits),
    )
    assert all_local.cost_remote == 0 and split.cost_remote > 0
    assert split.ttft_s > all_local.ttft_s and split.tpot_s > all_local.tpot_s  # the slower functions set them
    # More memory per function buys vCPUs: remote time and so TTFT fall.
    faster = [LayerPlan((3,), 4.0, ((3,),)), LayerPlan((2, 3), 4.0, ((2,), (3,)))]
    quicker = estimate(request, faster, profile, prices, limits)
    assert quicker.ttft_s < split.ttft_s and quicker.tpot_s < split.tpot_s


def test_the_prefill_estimate_is_the_papers_formula_on_a_hand_checked_case():
    request = _request(frequency=np.array([[0.5, 0.5, 0.0, 0.0]]), n_in=10, n_out=0, top_k=1, confidence=0.5)
    profile = Profile(
        local_expert_s_per_token=1.0,
        backbone_prefill_s_per_token=0.0,
        swap_s_per_token=0.0,
        invoke_s=0.5,
        bandwidth_bytes_s=math.inf,
        remote_fit=(0.0, 1.0, 2.0),  # T(y) = 2 s per token
    )
    tokens = Tokens.of(request)
    assert tokens.worst[0].tolist() == [5, 5, 0, 0]  # median of Binomial(10, 0.5)
    plan = [LayerPlan((1,), 1.0, ((1,),))]
    # local: 5 tokens x 1 s; remote: 5 x 2 s + 0.5 s invoke -> the layer waits for the remote side.
    assert estimate(request, plan, profile, Prices(), Limits(), tokens).ttft_s == pytest.approx(10.5)


def test_functions_on_the_hosts_cores_share_them_and_compute_at_their_threads_speed():
    """On the local platform a function gets floor(y) threads and a layer's batches share the host's cores: the
    layer lasts at least their core-seconds over the cores, each replica is billed its stretched handler time,
    and memory between whole GB buys no speed."""
    request = _request(frequency=np.array([[0.25, 0.25, 0.25, 0.25]]), n_in=40, n_out=0, top_k=2, confidence=0.5)
    own = Profile(
        local_expert_s_per_token=1e-3,
        backbone_prefill_s_per_token=0.0,
        swap_s_per_token=0.0,
        invoke_s=0.0,
        bandwidth_bytes_s=math.inf,
        remote_fit=(0.0, 1.0, 1e-3),  # 1 ms per token at any size: threads do not matter here
    )
    shared = replace(own, function_host_cores=1)
    tokens = Tokens.of(request)
    assert tokens.expected[0].tolist() == [20, 20, 20, 20]
    four = [LayerPlan((0, 1, 2, 3), 1.0, ((0,), (1,), (2,), (3,)))]  # every expert in its own function
    alone = estimate(request, four, own, Prices(), Limits(), tokens)
    together = estimate(request, four, shared, Prices(), Limits(), tokens)
    assert alone.ttft_s == pytest.approx(20e-3)  # four replicas at once, each 20 tokens x 1 ms
    assert together.ttft_s == pytest.approx(80e-3)  # one core: their 80 ms of work one after another
    # Each handler is busy until the phase ends on one core (4 threads at once, capped at the phase).
    assert together.cost_remote == pytest.approx(4 * alone.cost_remote)
    # Memory between whole GB: one thread at 1.9 GB as at 1 GB (the fit is read at the whole GB).
    fit = replace(own, remote_fit=(4e-3, 2.0, 0.0), function_host_cores=2)
    assert fit.remote_s_per_token(1.9) == pytest.approx(fit.remote_s_per_token(1.0))
    assert fit.remote_s_per_token(2.0) < fit.remote_s_per_token(1.0)
    assert replace(fit, function_host_cores=0).remote_s_per_token(1.9) < fit.remote_s_per_token(1.0)  # a share grows
