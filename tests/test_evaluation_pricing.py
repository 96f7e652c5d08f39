"""The evaluation's cost checks: a run's measured memory under every published price set, where Remoe breaks even,
and the cost model's prediction beside the measured cost (bench/evaluation/price_table.py, model_check.py)."""

from __future__ import annotations

import pytest

from bench.evaluation import model_check, price_table, report
from remoe.scheduler.price_sets import PRICE_SETS, PriceSet
from remoe.scheduler.problem import Prices, Profile
from remoe.scheduler.shape import ModelShape

ORDER = ["CPU", "GPU", "MIX", "Remoe"]


def _run(system: str, gb_s: dict[str, float], seconds: float, requests: int = 2, **result) -> dict:
    results = [{"n_in": 40, "n_out": 100, "cost": 1e-5, **result} for _ in range(requests)]
    resident = {"gb_s": {role: [v, 0.0] for role, v in gb_s.items()}, "peak_gb": {}, "seconds": seconds}
    return {"system": system, "workload": "paper", "results": results, "resident": resident}


def test_held_memory_splits_into_the_backbones_gpu_side_and_everything_else_per_request():
    remoe = price_table.split(_run("Remoe", {"backbone": 4.0, "expert-service-0": 6.0, "functions": 2.0}, 10.0))
    assert (remoe.gpu_gb_s, remoe.cpu_gb_s, remoe.gpu_seconds) == (2.0, 4.0, 5.0)
    cpu = price_table.split(_run("CPU", {"backbone": 8.0}, 10.0))  # one process, all of it CPU memory
    assert (cpu.gpu_gb_s, cpu.cpu_gb_s, cpu.gpu_seconds) == (0.0, 4.0, 0.0)
    assert price_table.split({**_run("MIX", {}, 0.0), "resident": None}) is None


def test_a_whole_gpu_price_bills_the_instance_for_the_seconds_held_whatever_it_holds():
    per_gb = PriceSet("per GB", Prices(1e-5, 3e-5), "test")
    whole = PriceSet("whole", Prices(1e-5, 3e-5), "test", whole_gpu_s=1e-3)
    small, big = price_table.HeldSplit("A", 1.0, 2.0, 5.0), price_table.HeldSplit("B", 9.0, 2.0, 5.0)
    assert small.cost(per_gb) == pytest.approx(3e-5 * 1.0 + 1e-5 * 2.0)
    assert small.cost(whole) == big.cost(whole) == pytest.approx(1e-3 * 5.0 + 1e-5 * 2.0)
    # Held 9 GB-s over 5 s: 1.8 GB on average, which takes two cards of 1 GB.
    cards = PriceSet("whole, 1 GB cards", Prices(1e-5, 3e-5), "test", whole_gpu_s=1e-3, gpu_memory_gb=1.0)
    assert big.cost(cards) == pytest.approx(2 * 1e-3 * 5.0 + 1e-5 * 2.0)
    assert small.cost(cards) == small.cost(whole)


def test_a_per_request_fee_charges_each_function_invocation_the_backbone_counted():
    fee = PriceSet("fee", Prices(1e-5, 3e-5), "test", request_fee=2e-7)
    counted = price_table.split(_run("Remoe", {"backbone": 4.0, "functions": 2.0}, 10.0, function_calls=50.0))
    assert counted.invocations == 50.0
    assert counted.cost(fee) == pytest.approx(3e-5 * 2.0 + 1e-5 * 1.0 + 2e-7 * 50)
    older = price_table.split(_run("Remoe", {"backbone": 4.0, "functions": 2.0}, 10.0))  # before the counting
    assert older.invocations is None and older.cost(fee) == pytest.approx(3e-5 * 2.0 + 1e-5 * 1.0)
    assert any(
        "Not counted" in line
        for line in price_table.table(
            [_run("CPU", {"backbone": 8.0}, 10.0), _run("Remoe", {"backbone": 2.0}, 10.0)], ORDER
        )
    )


def test_the_break_even_ratio_is_where_the_two_held_costs_are_equal():
    remoe, gpu = price_table.HeldSplit("Remoe", 1.0, 6.0, 1.0), price_table.HeldSplit("GPU", 3.0, 2.0, 1.0)
    assert price_table.break_even(remoe, gpu) == "cheaper above c_g / c_c = 2.00"  # 1 c_g + 6 c_c = 3 c_g + 2 c_c
    assert price_table.break_even(price_table.HeldSplit("Remoe", 1.0, 1.0, 1.0), gpu) == "cheaper at every ratio"
    cpu = price_table.HeldSplit("CPU", 0.0, 3.0, 0.0)
    assert price_table.break_even(remoe, cpu) == "dearer at every ratio"
    lean = price_table.HeldSplit("Remoe", 1.0, 1.0, 1.0)
    assert price_table.break_even(lean, cpu) == "cheaper below c_g / c_c = 2.00"


def test_the_price_table_prices_every_system_under_every_published_set_with_its_source():
    runs = [
        _run("CPU", {"backbone": 8.0}, 10.0),
        _run("GPU", {"backbone": 6.0}, 10.0),
        _run("Remoe", {"backbone": 2.0, "functions": 4.0}, 10.0),
    ]
    lines = price_table.table(runs, ORDER)
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| price set")]
    assert len(rows) == len(PRICE_SETS) and all(p.name in "\n".join(lines) and p.source for p in PRICE_SETS)
    assert "- vs GPU: cheaper above c_g / c_c = 1.00" in lines  # Remoe: 1 c_g + 2 c_c; GPU: 3 c_g
    assert price_table.table(runs[:2], ORDER) == []  # nothing to compare Remoe with without Remoe


def test_the_cost_model_check_sets_predictions_from_the_profile_and_compares_them_with_the_bill():
    shape = ModelShape("m", layers=2, experts=4, top_k=2, expert_bytes=2**20, hidden_bytes_per_token=512,
                       backbone_bytes=2**24, kv_bytes_per_token=256)  # fmt: skip
    runs = [_run("MIX", {"backbone": 1.0}, 1.0), _run("Remoe", {"backbone": 1.0}, 1.0, predicted_cost=2e-5)]
    model_check.add_predictions(runs, shape, Profile(), Prices())
    want = model_check.predict(shape, Profile(), Prices(), "MIX", 40, 100)
    assert [r["predicted_cost"] for r in runs[0]["results"]] == [want, want] and want > 0
    rows = {c.system: c for c in model_check.checks(runs, ORDER)}
    assert rows["MIX"].vs_billed == pytest.approx(want / 1e-5 - 1) and rows["Remoe"].vs_billed == pytest.approx(1.0)
    # a Remoe run from before the ledger kept its prediction has none to compare
    old = _run("Remoe", {"backbone": 1.0}, 1.0, predicted_cost=None)
    assert model_check.checks([old], ORDER) == []


def test_the_cost_model_check_says_how_long_its_profile_timed_and_how_far_off_that_is_here():
    spreads = {"spreads": [{"window_s": 1.0, "rms_error": 0.11}, {"window_s": 10.0, "rms_error": 0.07}]}
    # 4 lengths x 5 requests x 15 decode steps at 0.01 s: 3 s timed, nearest the 1-s spread below it
    rows = {str(n): {"ttft_s": 0.02, "tpot_s": 0.01, "requests": 5} for n in (16, 64, 128, 256)}
    note = model_check.sampling_note({"decode_new_tokens": 16, "end_to_end": rows}, spreads)
    assert "timed 3 s of decode" in note and "a 1-s sample" in note and "11% RMS" in note
    # an old quick profile (2 requests a length, no count kept) of 8 tokens: shorter than any spread measured
    old = {str(n): {"ttft_s": 0.02, "tpot_s": 0.01} for n in (16, 64, 128, 256)}
    note = model_check.sampling_note({"decode_new_tokens": 8, "end_to_end": old}, spreads)
    assert "timed 0.56 s" in note and "even a 1-s sample" in note
    assert model_check.sampling_note({"decode_new_tokens": 8, "end_to_end": old}, None).endswith("services).")
    # the spread between clusters, where the bench measured more than one
    between = {**spreads, "between_instances": {"instances": 4, "rms_error": 0.127, "max_error": 0.21}}
    assert "off the mean of 4 by 13% RMS" in model_check.sampling_note(
        {"decode_new_tokens": 8, "end_to_end": old}, between
    )


def test_the_planned_systems_gap_is_split_into_the_main_models_part_and_the_functions_part():
    # The plan predicted $3 main + $1 functions; the bill was $6 main (twice the busy time) + $1 functions.
    ledger = dict(predicted_cost=4.0, predicted_cost_main=3.0, cost=7.0, cost_main=6.0, main_s=2.0,
                  predicted_ttft_s=0.1, backbone_ttft_s=0.3, predicted_tpot_s=0.02, backbone_tpot_s=0.04)  # fmt: skip
    runs = [_run("MIX", {"backbone": 1.0}, 1.0), _run("Remoe", {"backbone": 1.0}, 1.0, **ledger)]
    (parts,) = model_check.ledger_parts(runs, ORDER)
    assert parts.system == "Remoe"
    assert (parts.main_predicted, parts.main_billed, parts.main_predicted_s, parts.main_s) == (3.0, 6.0, 1.0, 2.0)
    assert (parts.functions_predicted, parts.functions_billed) == (1.0, 1.0)
    row = next(line for line in model_check.parts_table([parts]) if line.startswith("| Remoe"))
    assert "| -50% |" in row and "| +0% |" in row and "| 100.0 | 300.0 |" in row
    assert "| - | - |" in row  # a run from before the ledger kept the functions' sizes
    # Planned at 1 and 2 GB, billed 1 s at 2 GB each: the functions ran bigger than the plan sized them.
    sized = _run("Remoe", {}, 1.0, **ledger, planned_function_mb=[1024, 2048], function_s=1.0, function_mb_s=2048.0)
    (parts,) = model_check.ledger_parts([sized], ORDER)
    assert (parts.function_mb_planned, parts.function_mb_billed) == (1536.0, 2048.0)
    assert "| 1536 | 2048 |" in model_check.parts_table([parts])[-2]
    # a run from before the ledger kept its parts shows no split
    older = _run("Remoe", {"backbone": 1.0}, 1.0, predicted_cost=4.0)
    assert model_check.ledger_parts([older], ORDER) == [] and model_check.parts_table([]) == []


def test_the_report_says_what_the_functions_did_for_the_systems_that_ran_them():
    gib = 2**30
    remoe = _run("Remoe", {"backbone": 1.0}, 10.0, function_s=3.0, function_round_trip_s=4.5, function_calls=40.0,
                 index=0, ttft_s=0.1, tpot_s=0.01, forecast_js=None, modelled=False)  # fmt: skip
    # samples (s, service bytes, function bytes, warm instances): 2 then 4 instances hosting 1 then 3 GiB
    remoe |= {"timeline": [(0.0, 0, 1 * gib, 2), (1.0, 0, 3 * gib, 4)], "cold_starts": 5, "cold_fallbacks": 6,
              "hit_rate": None}  # fmt: skip
    mix = {**remoe, "system": "MIX", "results": [{**r, "function_s": 0.0} for r in remoe["results"]], "timeline": []}
    paper = {run["system"]: report.summary(run, 1.0, 1.0, []) for run in (remoe, mix)}
    (row,) = [line for line in report.functions_table(paper) if line.startswith("| Remoe")]
    assert row == "| Remoe | 5 | 6 | 3.0 | 2.00 | 3.00 | 4.50 | 40.0 |"
    assert not any(line.startswith("| MIX") for line in report.functions_table(paper))  # it ran none
    assert report.functions_table({"MIX": paper["MIX"]}) == []
    # a run from before the bill was the handlers' time kept no round trips: it says what its bill was
    older = {
        **remoe,
        "results": [{k: v for k, v in r.items() if k != "function_round_trip_s"} for r in remoe["results"]],
    }
    lines = report.functions_table({"Remoe": report.summary(older, 1.0, 1.0, [])})
    assert "| Remoe | 5 | 6 | 3.0 | 2.00 | 3.00 | - | 40.0 |" in lines and any(
        "billed the round trips" in x for x in lines
    )


def test_quantized_runs_from_a_later_run_say_so_and_name_it():
    """`--quantized-only` serves the quantized split after the exact runs: the report must not call them one run."""
    later = {"separate_run": {"machine": "AMD EPYC x 2", "date": "2026-12-07 18:40 UTC", "commit": "d1e2aca"}}
    assert "same run" in report._quantized_when({})
    sentence = report._quantized_when(later)
    assert "separate run" in sentence and "d1e2aca" in sentence and "2026-12-07 18:40 UTC" in sentence
    assert "same run" not in sentence
