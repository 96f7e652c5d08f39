"""`remoe profile` and `remoe plan`: real measurements through real processes, plan files that `remoe up` takes,
model shapes with real byte sizes."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest

from remoe.platform.plan import load_plan_file
from remoe.profiling.profile import decode_context, decode_line, one_device_speeds
from remoe.scheduler.profile_file import fit_remote, load_profile
from remoe.scheduler.shape import deepseek_v2_lite, gpt2_moe, shape_of_model

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI


def remoe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remoe.cli", *args], capture_output=True, text=True, timeout=600)


def test_the_remote_time_fit_recovers_a_known_curve():
    ys = [1.0, 1.5, 2.0, 3.0, 4.0, 5.0]
    truth = (2e-3, 2.44, 2e-4)
    seconds = [truth[0] * math.exp(-truth[1] * y) + truth[2] for y in ys]
    th1, th2, th3 = fit_remote(ys, seconds)
    assert th2 == pytest.approx(2.44, rel=0.05) and th3 == pytest.approx(2e-4, rel=0.05)
    with pytest.raises(ValueError, match="at least 3"):
        fit_remote([1.0, 2.0], [1.0, 0.5])


def test_one_device_speeds_recover_the_per_layer_terms_of_known_latencies():
    layers, k, expert, new = 4, 2, 1e-4, 16
    fixed, per_token, decode, context = 2e-3, 3e-4, 1.5e-3, 2e-6  # per MoE layer
    rows = {n: {"ttft_s": layers * (fixed + n * (per_token + k * expert)),
                "tpot_s": layers * (decode + (n + new / 2) * context + k * expert)}
            for n in (16, 64, 128, 256)}  # fmt: skip
    assert one_device_speeds(rows, layers, k, expert, new) == pytest.approx((fixed, per_token, decode, context))


def test_a_decode_that_does_not_grow_with_context_gets_no_context_term():
    # Noise that slopes down is not a faster decode with more context: the median, flat.
    rows = {16: {"tpot_s": 0.0103}, 64: {"tpot_s": 0.0101}, 128: {"tpot_s": 0.0100}, 256: {"tpot_s": 0.0099}}
    assert decode_line(rows, layers=1, new_tokens=16) == pytest.approx((0.01005, 0.0))


def test_shapes_have_the_published_sizes():
    deepseek = deepseek_v2_lite()
    assert (deepseek.layers, deepseek.experts, deepseek.top_k) == (26, 64, 6)
    assert deepseek.expert_bytes == 3 * 2048 * 1408 * 2  # gate, up, down in bf16
    total = deepseek.backbone_bytes + deepseek.layers * deepseek.experts * deepseek.expert_bytes
    assert total / 2 == pytest.approx(15.7e9, rel=0.01)  # 15.7B parameters
    gpt2 = gpt2_moe()
    assert (gpt2.layers, gpt2.experts, gpt2.top_k) == (12, 8, 2)


def test_profile_measures_writes_json_and_plot_and_plan_uses_it(tiny_model, tmp_path):
    model = tiny_model("qwen3_moe")
    out = tmp_path / "profile.json"
    result = remoe("profile", "--model", str(model), "--out", str(out), "--quick", "--quiet")
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 10_000
    raw = json.loads(out.read_text())
    assert raw["machine"] and raw["samples"]["functions"] and raw["samples"]["end_to_end_two_functions"]
    profile = load_profile(out)
    assert profile.backbone_decode_s > 0 and profile.bandwidth_bytes_s > 1e7
    # A cold start (forked from the runtime template: tens of ms, not the template's own seconds of imports) is a
    # process start, a server start and a first load: more than a warm call, and more than 5 ms on any machine.
    assert 0.005 < profile.cold_start_s < 2.0 and profile.cold_start_s > profile.invoke_s
    assert all(v >= 0 for v in profile.remote_fit)
    assert profile.function_host_cores == os.cpu_count()  # its functions shared this host's cores, as remoe up's
    # The one-device systems are priced at their own measured speed: the CPU system's modelled TPOT at each prompt
    # length is the line through the TPOTs the whole model gave in one process (flat at their median when they
    # do not grow with the context), so over the lengths it averages what was measured.
    shape, measured = raw["samples"]["shape"], raw["samples"]["in_process"]
    tpots = [row["tpot_s"] for row in measured.values()]
    new_tokens, per_context = raw["samples"]["decode_new_tokens"], profile.cpu_backbone_decode_s_per_context_token
    modelled = [
        shape["layers"]
        * (
            profile.cpu_backbone_decode_s
            + per_context * decode_context(int(n), new_tokens)
            + shape["top_k"] * profile.cpu_expert_s_per_token
        )
        for n in measured
    ]
    if per_context == 0:
        assert modelled == pytest.approx([statistics.median(tpots)] * len(tpots), rel=1e-6)
    else:
        assert statistics.mean(modelled) == pytest.approx(statistics.mean(tpots), rel=1e-6)
    assert raw["samples"]["end_to_end_in_backbone"]
    # The plan command takes the profile and writes a plan file that `remoe up --plan` loads.
    plan_file = tmp_path / "plan.json"
    result = remoe(
        "plan", "--model", str(model), "--prompt", "The quick brown fox", "--n-out", "16",
        "--profile", str(out), "--remote", "4", "--out", str(plan_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "predicted TTFT" in result.stdout and "meets the SLO" in result.stdout
    specs = load_plan_file(plan_file)
    document = json.loads(plan_file.read_text())["plan"]
    remote = {(entry["layer"], e) for entry in document["layers"] for e in entry["remote"]}
    assert {x for s in specs for x in s.experts} == remote and remote
    assert all(s.memory_mb >= 1024 for s in specs)


def test_plan_says_when_no_plan_meets_the_slo_and_refuses_bad_input(tiny_model):
    model = str(tiny_model("qwen3_moe"))
    result = remoe("plan", "--model", model, "--n-in", "50", "--slo-ttft", "0.001")
    assert result.returncode == 3 and "CANNOT MEET" in result.stdout
    result = remoe("plan", "--model", model)
    assert result.returncode != 0 and "--n-in" in result.stderr
    result = remoe("plan", "--model", model, "--n-in", "5", "--profile", "/nonexistent.json")
    assert result.returncode != 0 and "remoe profile" in result.stderr
    result = remoe("profile", "--model", model, "--decode-seconds", "-1")
    assert result.returncode != 0 and "--decode-seconds" in result.stderr


def test_plan_for_a_paper_shape_as_json():
    result = remoe("plan", "--shape", "gpt2-moe", "--n-in", "128", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert len(document["plan"]["layers"]) == 12 and document["plan"]["predicted"]["cost"] > 0


def test_shape_of_a_checkpoint_counts_its_bytes(tiny_model):
    shape = shape_of_model(tiny_model("mixtral"))
    assert shape.layers == 3 and shape.experts == 8 and shape.expert_bytes > 0 and shape.backbone_bytes > 0
    request = shape.request(None, 10, 5)
    assert np.allclose(request.frequency.sum(1), 1.0)
