"""The paper's baselines (CPU, GPU, MIX, Fetch) costed by the same model as Remoe's plans."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from remoe.scheduler.baselines import compare, workload_costs
from remoe.scheduler.problem import Limits, Prices, Profile, Request

# A GPU 10x faster than the CPU for both the backbone and the experts.
PROFILE = Profile(
    local_expert_s_per_token=4e-4,
    cpu_expert_s_per_token=4e-4,
    gpu_expert_s_per_token=4e-5,
    cpu_backbone_prefill_s_per_token=2e-4,
    cpu_backbone_prefill_layer_s=3e-3,
    backbone_prefill_s_per_token=2e-5,
    gpu_backbone_prefill_s_per_token=2e-5,
    gpu_backbone_prefill_layer_s=3e-4,
    cpu_backbone_decode_s=1e-3,
    backbone_decode_s=1e-4,
    gpu_backbone_decode_s=1e-4,
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


def test_mix_costs_what_the_paper_s_formulas_give_with_every_expert_local():
    """Expectation written out from the paper's formulas (scheduler/estimate.py's docstring), not by the code."""
    request = Request(np.full((4, 8), 1 / 8), n_in=128, n_out=200, top_k=2, expert_bytes=200 * 2**20,
                      hidden_bytes_per_token=4096, backbone_bytes=2**30)  # fmt: skip
    prices = Prices()
    systems = compare(request, PROFILE, prices, LIMITS)
    mix = systems["MIX"]
    p, layers, n_in, k = PROFILE, 4, 128, 2
    # Every token uses k experts, all on the CPU; expected local tokens per layer: n_in * k.
    decode = p.backbone_decode_s + 2 * p.swap_s_per_token + k * p.local_expert_s_per_token  # per layer, per token
    prefill = p.backbone_prefill_layer_s + n_in * (
        p.backbone_prefill_s_per_token + k * p.local_expert_s_per_token + 2 * p.swap_s_per_token
    )
    gpu_gb, cpu_gb = 1.0, 6.3  # the 1 GiB backbone; 32 experts x 200 MiB = 6.25 GB, billed in 0.1 GB steps
    assert (mix.gpu_gb, mix.cpu_gb) == (gpu_gb, cpu_gb)
    assert mix.tpot_s == pytest.approx(layers * decode)
    main_s = layers * prefill + 199 * layers * decode  # the prefill yields the first of the 200 tokens
    assert mix.cost == pytest.approx(main_s * (prices.gpu_gb_s * gpu_gb + prices.cpu_gb_s * cpu_gb))
    assert systems["Remoe"].cost <= mix.cost * (1 + 1e-9)  # MIX is one of the planner's candidates


def test_the_one_device_systems_cost_what_their_formulas_give_with_the_fixed_prefill_cost_per_layer():
    """CPU and GPU written out: per MoE layer a fixed prefill cost, n_in tokens through the backbone and n_in * k
    expert tokens; each of the n_out - 1 decode steps the backbone and k experts per layer; memory x busy time."""
    request = Request(np.full((4, 8), 1 / 8), n_in=128, n_out=200, top_k=2, expert_bytes=200 * 2**20,
                      hidden_bytes_per_token=4096, backbone_bytes=2**30)  # fmt: skip
    prices, p, layers, n_in, k = Prices(), PROFILE, 4, 128, 2
    systems = compare(request, p, prices, LIMITS)
    for name, (fixed, per_token, decode, expert, price, memory) in {
        "CPU": (p.cpu_backbone_prefill_layer_s, p.cpu_backbone_prefill_s_per_token, p.cpu_backbone_decode_s,
                p.cpu_expert_s_per_token, prices.cpu_gb_s, systems["CPU"].cpu_gb),
        "GPU": (p.gpu_backbone_prefill_layer_s, p.gpu_backbone_prefill_s_per_token, p.gpu_backbone_decode_s,
                p.gpu_expert_s_per_token, prices.gpu_gb_s, systems["GPU"].gpu_gb),
    }.items():  # fmt: skip
        tpot = layers * (decode + k * expert)
        busy = layers * (fixed + n_in * (per_token + k * expert)) + 199 * tpot
        assert systems[name].tpot_s == pytest.approx(tpot)
        assert systems[name].cost == pytest.approx(busy * price * memory)
    assert systems["CPU"].ttft_s > layers * (p.cpu_backbone_prefill_layer_s + n_in * p.cpu_backbone_prefill_s_per_token)


def test_every_system_s_decode_step_grows_with_the_tokens_it_attends_to():
    """Per MoE layer, c seconds more per token of context, at the decode's mean context n_in + n_out / 2 (a
    DeepSeek-shaped decode on a CPU without AVX-512 measured 1.7 ms more per step at 256 prompt tokens)."""
    c = {"backbone": 2e-6, "cpu": 5e-6, "gpu": 1e-6}
    profile = replace(
        PROFILE,
        backbone_decode_s_per_context_token=c["backbone"],
        cpu_backbone_decode_s_per_context_token=c["cpu"],
        gpu_backbone_decode_s_per_context_token=c["gpu"],
    )
    without = {n_in: compare(replace(_request(0), n_in=n_in), PROFILE, Prices(), LIMITS) for n_in in (16, 256)}
    assert without[16]["CPU"].tpot_s == pytest.approx(without[256]["CPU"].tpot_s)  # no term: the same step
    for n_in, before in without.items():
        after = compare(replace(_request(0), n_in=n_in), profile, Prices(), LIMITS)
        context, layers = n_in + 200 / 2, 4
        for name, per_token in {"CPU": c["cpu"], "GPU": c["gpu"], "Fetch": c["gpu"], "MIX": c["backbone"]}.items():
            assert after[name].tpot_s == pytest.approx(before[name].tpot_s + layers * per_token * context)
            assert after[name].cost > before[name].cost
        assert after["Remoe"].tpot_s > before["Remoe"].tpot_s


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


def test_a_prefill_batch_prices_experts_at_the_batched_rate_and_decode_at_the_one_token_rate():
    """An expert reads its weights once for a whole prefill batch: with a batched rate 10x below the one-token
    rate, every system's TTFT falls by 90% of its expert time and its TPOT does not move."""
    request = Request(np.full((4, 8), 1 / 8), n_in=128, n_out=200, top_k=2, expert_bytes=200 * 2**20,
                      hidden_bytes_per_token=4096, backbone_bytes=2**30)  # fmt: skip
    from remoe.scheduler.estimate import Tokens

    p = PROFILE
    batched = Profile(
        **{f: getattr(p, f) for f in Profile.__slots__ if not f.endswith("expert_prefill_s_per_token")},
        local_expert_prefill_s_per_token=p.local_expert_s_per_token / 10,
        cpu_expert_prefill_s_per_token=p.cpu_expert_s_per_token / 10,
        gpu_expert_prefill_s_per_token=p.gpu_expert_s_per_token / 10,
    )
    one, many = compare(request, p, Prices(), LIMITS), compare(request, batched, Prices(), LIMITS)
    for name, rate in {
        "MIX": p.local_expert_s_per_token,
        "CPU": p.cpu_expert_s_per_token,
        "GPU": p.gpu_expert_s_per_token,
    }.items():
        saved = Tokens.of(request).worst.sum() * rate * 0.9  # TTFT: every layer's worst-case expert tokens
        assert many[name].ttft_s == pytest.approx(one[name].ttft_s - saved)
        assert many[name].tpot_s == pytest.approx(one[name].tpot_s)
    assert Profile(local_expert_s_per_token=3e-4).local_expert_prefill_s_per_token == 3e-4  # unset: one rate


def test_whole_gpu_billing_charges_whole_cards_for_the_main_model_s_seconds_whatever_memory_it_holds():
    from remoe.scheduler.baselines import billed_under
    from remoe.scheduler.price_sets import PriceSet

    prices = Prices(1e-5, 2e-5)
    systems = compare(_request(3), PROFILE, prices, LIMITS)
    for card_gb in (80.0, 1.5):  # the GPU system's 7.3 GB fits one 80 GB card, needs five of 1.5 GB
        price = PriceSet("whole", prices, "test", whole_gpu_s=1e-3, gpu_memory_gb=card_gb)
        for name in ("GPU", "MIX", "Fetch", "Remoe"):
            r = systems[name]
            busy = (r.cost - r.remote_cost) / (prices.gpu_gb_s * r.gpu_gb + prices.cpu_gb_s * r.cpu_gb)
            cards = -(-r.gpu_gb // card_gb)
            whole = billed_under(r, price)
            assert whole.cost == pytest.approx(busy * (cards * 1e-3 + prices.cpu_gb_s * r.cpu_gb) + r.remote_cost)
            assert (whole.ttft_s, whole.tpot_s, whole.gpu_gb) == (r.ttft_s, r.tpot_s, r.gpu_gb)
        assert billed_under(systems["CPU"], price) == systems["CPU"]  # no GPU, nothing changes
    assert price.gpus(systems["GPU"].gpu_gb) == 5


def test_a_per_request_fee_is_charged_for_each_of_remoe_s_expected_function_invocations():
    from remoe.scheduler.baselines import billed_under
    from remoe.scheduler.price_sets import PriceSet

    prices = Prices(1e-5, 2e-5)
    remoe = compare(_request(3), PROFILE, prices, LIMITS)["Remoe"]
    assert remoe.remote_cost > 0 and remoe.invocations >= 199  # experts out: at least one call per decode token
    fee = PriceSet("fee", prices, "test", request_fee=1e-7)
    assert billed_under(remoe, fee).cost == pytest.approx(remoe.cost + 1e-7 * remoe.invocations)
