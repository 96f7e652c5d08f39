"""`remoe predictor eval` end to end on a small model and a few real prompts: every method scored."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from remoe.corpus.build import build_corpus, write_jsonl

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI


def test_eval_reports_every_method_and_writes_table_and_plot(tiny_model, tmp_path):
    prompts = build_corpus(progress=False)[:60]
    write_jsonl(prompts[:50], tmp_path / "train.jsonl")
    write_jsonl(prompts[50:], tmp_path / "test.jsonl")
    out = subprocess.run(
        [sys.executable, "-m", "remoe.cli", "predictor", "eval", "--model", str(tiny_model("qwen3_moe"))]
        + ["--train", str(tmp_path / "train.jsonl"), "--test", str(tmp_path / "test.jsonl")]
        + ["--candidates", "20", "--alpha", "5", "--json", "-q", "--out", str(tmp_path / "res")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    scores = {s["method"]: s for s in report["scores"]}
    assert set(scores) == {"SPS", "EF", "global", "nearest", "BF", "embedding top-k"}
    assert (report["train_prompts"], report["test_prompts"]) == (50, 10)
    for s in scores.values():
        assert 0 <= s["js_mean"] <= 0.6932 and 0 <= s["recall_top_k"] <= 1
    # A random-init model routes by token identity: prompts still differ from equal frequency.
    assert scores["EF"]["js_mean"] > scores["BF"]["js_mean"]
    assert report["sps_predict_ms_p50"] > 0
    assert (tmp_path / "res" / "predictor.png").stat().st_size > 1000
    table = (tmp_path / "res" / "predictor.md").read_text()
    assert "| SPS |" in table and "vs brute force" in table
