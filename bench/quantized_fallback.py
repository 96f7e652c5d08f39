"""Quantized experts where the native kernel does not serve (a CPU without AVX-512): widened to bf16 at load, as
before, against kept as stored in torch's weight-only int8/int4 kernels, side by side in one run.

A DeepSeek-V2-Lite-shaped MoE layer (experts of hidden 2048, intermediate 1408, bf16, random init) split three
ways (exact, int8, int4 group 128), served by LocalExpertExecutor in bf16 as an expert service or a function
serves it: 16 experts loaded, then a decode step (1 token to 6 experts, DeepSeek's top-6) and a 4-token step (24
slots over the 16), each call after reading 256 MB so the experts come from DRAM; the ways alternated round by
round, medians.

Usage: python bench/quantized_fallback.py [--rounds 15] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cold_start import deepseek_layer  # noqa: E402
from remoe.checkpoint.weights import open_weights  # noqa: E402
from remoe.experts.executor import LocalExpertExecutor  # noqa: E402
from remoe.experts.kernels import select  # noqa: E402
from remoe.machine import machine_description, source_commit  # noqa: E402
from remoe.model.split import split_checkpoint  # noqa: E402

EXPERTS = 16
LAYER = 1
STEPS = {1: 6, 4: 6}  # tokens -> slots per token


def _executor(split: Path, widen: bool) -> LocalExpertExecutor:
    """widen: the path before torch's kernels took quantized bf16 experts (they were dequantized at load)."""
    weights = open_weights(split)
    with mock.patch.object(select, "_torch_quantized_fits", return_value=False) if widen else nullcontext():
        executor = LocalExpertExecutor(weights, dtype=torch.bfloat16)
    for e in range(EXPERTS):
        executor.preload(LAYER, e)
    return executor


def _steps(hidden_size: int) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for tokens, slots in STEPS.items():
        hidden = torch.randn(tokens, hidden_size, generator=g).bfloat16()  # [T, H]
        index = torch.stack([torch.randperm(EXPERTS, generator=g)[:slots] for _ in range(tokens)])  # [T, K]
        out[tokens] = (hidden, index, torch.rand(tokens, slots, generator=g).bfloat16())
    return out


def measure(rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = deepseek_layer(tmp).path  # one dense and one MoE layer of 64 experts, bf16
        splits = {}
        for fmt in ("same", "int8", "int4"):
            splits[fmt] = tmp / f"split-{fmt}"
            split_checkpoint(model, splits[fmt], progress=False, expert_dtype=fmt, group_size=128)
        ways = {
            "bf16 exact split": _executor(splits["same"], widen=False),
            "int8 widened to bf16 (before)": _executor(splits["int8"], widen=True),
            "int8 kept, torch int8 kernel": _executor(splits["int8"], widen=False),
            "int4 widened to bf16 (before)": _executor(splits["int4"], widen=True),
            "int4 kept, torch int4 kernel": _executor(splits["int4"], widen=False),
        }
        steps = _steps(ways["bf16 exact split"].weights.arch.hidden_size)
        flush = torch.ones(64 * 2**20)  # 256 MB: every call finds its experts out of the caches
        times: dict[str, dict[int, list[float]]] = {w: {t: [] for t in steps} for w in ways}
        outputs = {w: {t: ex.compute(LAYER, *steps[t]) for t in steps} for w, ex in ways.items()}
        for _ in range(rounds):
            for way, executor in ways.items():  # alternated: the machine's load drifts
                for tokens, step in steps.items():
                    flush.add_(1.0)
                    start = time.perf_counter()
                    executor.compute(LAYER, *step)
                    times[way][tokens].append(time.perf_counter() - start)
        rows = []
        for way, executor in ways.items():
            twin = way.replace("kept, torch int8 kernel", "widened to bf16 (before)").replace(
                "kept, torch int4 kernel", "widened to bf16 (before)"
            )
            rows.append(
                {
                    "way": way,
                    "kernel": executor.kernel_reasons[LAYER],
                    "resident_mb": round(executor.cache.resident_bytes / 2**20, 1),
                    "ms": {t: round(statistics.median(v) * 1e3, 2) for t, v in times[way].items()},
                    "max_rel_diff_vs_widened": None
                    if twin == way
                    else max(
                        float((outputs[way][t].float() - outputs[twin][t].float()).abs().max())
                        / float(outputs[twin][t].float().abs().max())
                        for t in steps
                    ),
                }
            )
    return {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": source_commit(),
        "rounds": rounds,
        "rows": rows,
    }


def report(result: dict) -> str:
    rows = {r["way"]: r for r in result["rows"]}
    exact = rows["bf16 exact split"]
    lines = [
        "# Quantized experts without the native kernel: widened at load vs kept in torch's kernels",
        "",
        f"Machine: {result['machine']}. {result['date']}, commit {result['commit']}. One run, medians of "
        f"{result['rounds']} rounds, the ways alternated. Written by `python bench/quantized_fallback.py`.",
        "",
        "A DeepSeek-V2-Lite-shaped MoE layer (16 of its experts loaded: hidden 2048, intermediate 1408, bf16) served",
        "by LocalExpertExecutor in bf16, as an expert service or function serves it; each call after reading 256 MB",
        "(the experts come from DRAM). *widened (before)*: the quantized experts dequantized to bf16 at load, what",
        "every CPU without AVX-512 did until this change; *kept*: the same split computed by torch's weight-only",
        "kernels (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`, bf16 activations), holding the",
        "stored bytes. `max rel diff` is against the widened path's output on the same inputs (both compute the",
        "same dequantized weights; torch's kernels round their scales to bf16).",
        "",
        "| way | experts held (MiB) | 1 token x 6 experts (ms) | 4 tokens x 6 (ms) | vs bf16 exact, 1 token | "
        "max rel diff vs widened | kernel |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:  # the JSON's keys: "1" and "4" tokens
        diff = "-" if r["max_rel_diff_vs_widened"] is None else f"{r['max_rel_diff_vs_widened']:.1e}"
        lines.append(
            f"| {r['way']} | {r['resident_mb']} | {r['ms']['1']} | {r['ms']['4']} | "
            f"{exact['ms']['1'] / r['ms']['1']:.2f}x | {diff} | {r['kernel']} |"
        )
    lines.append("")
    for q in ("int8", "int4"):
        before, after = rows[f"{q} widened to bf16 (before)"], rows[f"{q} kept, torch {q} kernel"]
        b1, a1 = before["ms"]["1"], after["ms"]["1"]
        lines.append(
            f"- **{q}**: kept as stored, the 16 experts hold {after['resident_mb']} MiB against "
            f"{before['resident_mb']} MiB widened ({after['resident_mb'] / before['resident_mb']:.2f}x), and a "
            f"decode step takes {a1} ms against {b1} ms ({b1 / a1:.2f}x faster)."
        )
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantized_fallback.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "quantized_fallback.md").write_text(report(json.loads(json.dumps(result))))  # keys as the file has them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.report_only:
        result = json.loads((args.out / "quantized_fallback.json").read_text())
    else:
        torch.set_num_threads(2)
        result = measure(args.rounds)
    write(result, args.out)
    print((args.out / "quantized_fallback.md").read_text())


if __name__ == "__main__":
    main()
