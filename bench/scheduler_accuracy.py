"""Predicted vs measured TTFT and TPOT through `remoe up`, for plans with and without remote functions.

The model's speeds come from `remoe profile` on this machine (run first, in the same process). For each
placement a plan file is written and a local cluster serves it; each prompt's prediction uses the activation
it actually had (so forecast error is not counted here, only the latency model's) at confidence 0.5 (the
median token counts, not the 95% worst case the planner plans with).

Usage: python bench/scheduler_accuracy.py [--model DIR] [--prompts N] [--new-tokens N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from remoe.cluster import LocalCluster
from remoe.corpus.build import read_prompts
from remoe.machine import machine_description
from remoe.model.tiny import TinySpec, make_tiny_model
from remoe.model.tokenizer import load_tokenizer
from remoe.platform.base import functions_to_json
from remoe.profiling.profile import plot_profile, profile_model
from remoe.scheduler.estimate import LayerPlan, estimate
from remoe.scheduler.plan_output import plan_functions
from remoe.scheduler.problem import Limits, Prices
from remoe.scheduler.shape import shape_of_model
from remoe.sdk import Client

TRAINED = Path("data/models/trained-qwen3")
CORPUS = Path("data/corpus/test.jsonl")


def placements(experts: int, layers: int) -> dict[str, list[LayerPlan]]:
    """All local; half of every layer's experts in one function; the same half over two replicas."""
    half = tuple(range(experts // 2, experts))
    split = (half[: len(half) // 2], half[len(half) // 2 :])
    return {
        "all local": [LayerPlan() for _ in range(layers)],
        "half remote, 1 replica, 1 GB": [LayerPlan(half, 1.0, (half,)) for _ in range(layers)],
        "half remote, 2 replicas, 1 GB": [LayerPlan(half, 1.0, split) for _ in range(layers)],
        "half remote, 1 replica, 2 GB": [LayerPlan(half, 2.0, (half,)) for _ in range(layers)],
    }


def measure(model: Path, layers: list[LayerPlan], moe_layers, prompts, new_tokens, run_dir: Path) -> list:
    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = run_dir / "plan.json"
    plan_file.write_text(json.dumps(functions_to_json(plan_functions(layers, moe_layers))))
    has_functions = any(p.remote for p in layers)
    rows = []
    with LocalCluster(
        model, port=0, predictor=False, run_dir=run_dir, plan_file=plan_file if has_functions else None
    ) as c:
        with Client(c.address) as client:
            for prompt in prompts:  # steady state: cold starts and lazy expert loads out of the way
                client.generate(prompt=prompt, max_new_tokens=2, ignore_eos=True)
            for prompt in prompts:
                result = client.generate(prompt=prompt, max_new_tokens=new_tokens, ignore_eos=True)
                rows.append(result.usage)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the trained tiny model, else a random one")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="remoe-accuracy-"))
    model = args.model or (TRAINED if (TRAINED / "config.json").is_file() else None)
    if model is None:
        model = make_tiny_model(TinySpec("qwen3_moe", layers=4, experts=8, top_k=2, hidden=256, vocab=4096), tmp / "m")
    tokenizer = load_tokenizer(model)
    texts = read_prompts(CORPUS) if CORPUS.is_file() else ["The quick brown fox jumps over the lazy dog. " * 10]
    prompts = [t[:500] for t in texts[: args.prompts]] or texts
    print(f"profiling {model} ...", file=sys.stderr)
    report = profile_model(model, progress=True, run_dir=tmp / "profile")
    args.out.mkdir(parents=True, exist_ok=True)
    report.save(args.out / "profile-tiny.json")
    plot_profile(report, args.out / "profile-tiny.png")
    profile, shape = report.profile, shape_of_model(model)
    from remoe.checkpoint.weights import open_weights

    moe_layers = open_weights(model).arch.layer_indices
    results = {}
    for name, layers in placements(shape.experts, shape.layers).items():
        print(f"serving: {name}", file=sys.stderr)
        usages = measure(
            model, layers, moe_layers, prompts, args.new_tokens, tmp / name.replace(" ", "-").replace(",", "")
        )
        predicted_ttft, predicted_tpot = [], []
        for usage, prompt in zip(usages, prompts, strict=True):
            counts = np.asarray(usage.prefill_activations, dtype=np.float64)  # [L, E]
            request = shape.request(
                counts / counts.sum(1, keepdims=True), len(tokenizer.encode(prompt)), args.new_tokens, confidence=0.5
            )
            est = estimate(request, layers, profile, Prices(), Limits())
            predicted_ttft.append(est.ttft_s)
            predicted_tpot.append(est.tpot_s)
        measured_ttft = [u.ttft_s for u in usages]
        measured_tpot = [u.tpot_s for u in usages]
        results[name] = {
            "measured_ttft_ms": statistics.median(measured_ttft) * 1e3,
            "predicted_ttft_ms": statistics.median(predicted_ttft) * 1e3,
            "measured_tpot_ms": statistics.median(measured_tpot) * 1e3,
            "predicted_tpot_ms": statistics.median(predicted_tpot) * 1e3,
        }
        r = results[name]
        r["ttft_error"] = r["predicted_ttft_ms"] / r["measured_ttft_ms"] - 1
        r["tpot_error"] = r["predicted_tpot_ms"] / r["measured_tpot_ms"] - 1
        print(json.dumps({name: r}), file=sys.stderr)
    meta = {
        "model": str(model),
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
    }
    (args.out / "scheduler_accuracy.json").write_text(json.dumps({**meta, "placements": results}, indent=2) + "\n")
    lines = [
        "# Predicted vs measured latency through `remoe up`",
        "",
        f"Model {model.name} ({shape.layers} MoE layers x {shape.experts} experts, top-{shape.top_k}); "
        f"{len(prompts)} corpus prompts (first 500 characters), {args.new_tokens} new tokens, medians. "
        f"Machine: {meta['machine']}; {meta['date']}. Profile: profile-tiny.json (measured in the same run).",
        "",
        "| placement | TTFT measured (ms) | TTFT predicted (ms) | error | TPOT measured (ms) | TPOT predicted (ms) "
        "| error |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['measured_ttft_ms']:.1f} | {r['predicted_ttft_ms']:.1f} | {r['ttft_error']:+.0%} | "
            f"{r['measured_tpot_ms']:.2f} | {r['predicted_tpot_ms']:.2f} | {r['tpot_error']:+.0%} |"
        )
    (args.out / "scheduler_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
