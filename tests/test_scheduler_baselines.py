"""The paper's baselines (CPU, GPU, MIX, Fetch) costed by the same model as Remoe's plans."""

from __future__ import annotations

import numpy as np
import pytest

from remoe.scheduler.baselines import compare, workload_costs
from remoe.scheduler.estimate import LayerPlan, estimate
from remoe.scheduler.problem import Limits, Prices, Profile, Request

# A GPU 10x faster than the CPU for both the backbone and the experts.
PROFILE = Profile(
    local_expert_s_per_token=4e-4,
    gpu_expert_s_per_token=4e-5,
    cpu_backbone_prefill_s_per_token=2e-4,
    backbone_prefill_s_per_token=2e-5,
    cpu_backbone_decode_s=1e-3,
    backbone_decode_s=1e-4,
    remote_fit=(4e-3, 2.44, 2e-4),
)
LIMITS = Limits(remote_memory_gb=(0.5, 3.0), main_memory_gb=(0.1, 40.0))


def _request(seed: int, **slo) -> Request:
    rng = np.random.default_rng(seed)
    return Request(
        rng.dirichlet(np.ones(8) * 0.3, size=4),
        n_in=128,
        n_out=200,
        top_k=2,
        expert_bytes=200 * 2**20,
        hidden_bytes_per_token=4096,
        backbone_bytes=2**30,
        **slo,
    )


def test_mix_is_remoe_with_nothing_remote_and_remoe_never_costs_more_when_mix_meets_the_slo():
    request = _request(0)
    systems = compare(request, PROFILE, Prices(), LIMITS)
    all_local = estimate(request, [LayerPlan()] * request.layers, PROFILE, Prices(), LIMITS)
    assert systems["MIX"].cost == pytest.approx(all_local.cost) and systems["MIX"].ttft_s == all_local.ttft_s
    assert systems["Remoe"].cost <= systems["MIX"].cost * (1 + 1e-9)  # MIX is one of the planner's candidates


def test_fetch_holds_less_gpu_memory_than_gpu_at_the_same_speed_and_cpu_is_slowest():
    systems = compare(_request(1), PROFILE, Prices(), LIMITS)
    gpu, fetch, cpu = systems["GPU"], systems["Fetch"], systems["CPU"]
    assert fetch.ttft_s == gpu.ttft_s and fetch.tpot_s == gpu.tpot_s
    assert fetch.gpu_gb < gpu.gpu_gb and fetch.cost < gpu.cost
    assert cpu.ttft_s > gpu.ttft_s and cpu.tpot_s > gpu.tpot_s and cpu.gpu_gb == 0


def test_slo_attainment_follows_each_systems_latency():
    fast = compare(_request(2), PROFILE, Prices(), LIMITS)["GPU"]
    tight = _request(2, slo_ttft_s=fast.ttft_s * 1.01, slo_tpot_s=fast.tpot_s * 1.01)
    table = workload_costs([tight], PROFILE, Prices(), LIMITS)
    assert table["GPU"]["slo_attainment"] == 1.0 and table["CPU"]["slo_attainment"] == 0.0
    assert table["Remoe"]["total_cost"] == pytest.approx(table["Remoe"]["mean_cost"])


def test_a_small_model_on_the_cpu_pays_the_same_minimum_memory_as_the_main_models_cpu_part():
    small = Request(np.full((4, 8), 1 / 8), n_in=16, n_out=16, top_k=2, expert_bytes=2**20,
                    hidden_bytes_per_token=256, backbone_bytes=10 * 2**20)  # fmt: skip
    systems = compare(small, PROFILE, Prices(), Limits(main_memory_gb=(1.0, 40.0)))
    assert systems["CPU"].cpu_gb == systems["MIX"].cpu_gb == 1.0  # 42 MB of weights, billed as the smallest size
