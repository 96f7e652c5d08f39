"""Where a planned system's function bill parts from its prediction: the sizes the plans gave their remote layers
against the sizes of the functions that billed, and the predicted against the billed function seconds, request
by request, on the DeepSeek-V2-Lite shape (4 layers) the evaluation measures (issue 25: Remoe-oracle's
functions billed 1.48x their prediction there, Remoe's 0.99x).

Serves only Remoe and Remoe-oracle, on the evaluation's model, profile and corpus, at the SLO the evaluation's
JSON holds for it (no MIX run to set one). Writes docs/results/function_sizes.md and .json (measured, with the
machine, date and commit).

Usage: python -m bench.function_sizes [--requests 12] [--systems Remoe-oracle Remoe] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.evaluation import model_check, models, systems, workloads
from bench.evaluation.__main__ import FULL, case, log, profiled_setting
from remoe.corpus.build import read_prompts
from remoe.machine import machine_description, source_commit

MODEL = "deepseek-v2-lite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--systems", nargs="+", default=["Remoe-oracle", "Remoe"])
    parser.add_argument("--evaluation", type=Path, default=Path("docs/results/evaluation.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    provenance = {"machine": machine_description(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "commit": source_commit()}  # fmt: skip
    from remoe.model.engine import LocalEngine

    stored = json.loads(args.evaluation.read_text())["models"][MODEL]
    plan = FULL[MODEL]
    corpus = models.corpus()
    texts, train = read_prompts(corpus / "test.jsonl"), read_prompts(corpus / "train.jsonl")
    model = case(MODEL, quick=False)
    setting = profiled_setting(model, plan, train, models.CACHE / "runs" / f"{MODEL}-sizes")
    setting.slo_ttft_s, setting.slo_tpot_s = stored["slo_ttft_s"], stored["slo_tpot_s"]
    load = workloads.paper(texts, args.requests, plan.new_tokens)
    engine = LocalEngine(model.path)
    frequencies, _ = systems.prefill_frequencies(engine, load.prompts)
    engine.close()
    server, address = systems.start_oracle(model.path, frequencies)
    rows = []
    try:
        for system in args.systems:
            log(f"{system}: {args.requests} requests")
            (run,) = systems.serve(system, setting, [load], address)
            rows += run.results
    finally:
        server.server.stop(0)
    lines = [
        f"# Function sizes: planned against billed ({MODEL}, 4 layers)",
        "",
        f"Measured. Machine: {provenance['machine']}. Date: {provenance['date']}. Commit: {provenance['commit']}. "
        f"{args.requests} corpus prompts x {plan.new_tokens} output tokens per system, the evaluation's profile "
        f"and SLO (TTFT {setting.slo_ttft_s * 1e3:.1f} ms, TPOT {setting.slo_tpot_s * 1e3:.2f} ms). "
        "Regenerate: `python -m bench.function_sizes`.",
        "",
        "*Planned MB*: the size the request's plan gave each of its remote layers (the metering ledger keeps them). "
        "*Billed MB*: the size of the functions that billed it, weighted by their billed seconds. *Predicted "
        "function s*: the plan's predicted functions $ over the CPU price and the planned size (its mean over "
        "layers), the seconds the prediction implies.",
        "",
        "| system | request | planned MB (per remote layer) | billed MB | function s, billed | function s, predicted "
        "| functions $, predicted / billed |",
        "|---|---|---|---|---|---|---|",
    ]
    price = setting.prices.cpu_gb_s
    for r in rows:
        planned = r.planned_function_mb or []
        planned_mb, billed_mb = model_check.function_sizes([asdict(r)])
        predicted_remote = (r.predicted_cost or 0.0) - (r.predicted_cost_main or 0.0)
        billed_remote = r.cost - (r.cost_main or 0.0)
        predicted_s = predicted_remote / (price * planned_mb / 1024) if planned_mb else 0.0
        ratio = f"{predicted_remote / billed_remote:.2f}" if billed_remote else "-"
        lines.append(
            f"| {r.system} | {r.index} | {', '.join(map(str, planned)) or '-'} | {model_check.format_mb(billed_mb)} | "
            f"{r.function_s:.2f} | {predicted_s:.2f} | {ratio} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {**provenance, "requests": args.requests, "results": [asdict(r) for r in rows]}
    (args.out / "function_sizes.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "function_sizes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
