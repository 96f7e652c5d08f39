"""The paper's comparison side by side, in one run: CPU, GPU, MIX, Fetch, Remoe and Remoe with an oracle
forecast, on the same prompts, the same price table and the same machine.

For each model (bench/evaluation/models.py): profile it (`remoe profile`), measure MIX on the paper's workload
and set the SLO to 1.5x MIX's median TTFT and TPOT, then run every system on the paper's workload, a
prefill/decode ratio sweep and a bursty trace (tiny model: idle gaps longer than the function TTL). Writes
docs/results/evaluation.json, evaluation.md and PNG plots.

Usage: python -m bench.evaluation [--quick] [--models NAME ...] [--expert-dtype int4] [--report-only]
                                  [--out docs/results]
  --quick: the tiny model only, 8 requests x 32 tokens, a 2x2 sweep, 2 bursts (under 10 minutes here)
  --expert-dtype: the paper workload again from a split with int8/int4 experts, at the same SLO, same run
  --report-only: recompute the formula-priced costs from the measured times and rewrite the report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.evaluation import model_check, models, report, systems, workloads
from bench.evaluation.resident import RSS_SUM, HeldMemory
from remoe.constants import DECODE_SAMPLE_S
from remoe.corpus.build import read_prompts
from remoe.machine import machine_description, source_commit
from remoe.profiling.profile import profile_model
from remoe.scheduler.problem import Prices, Profile
from remoe.scheduler.profile_file import load_profile
from remoe.scheduler.shape import ModelShape, shape_of_model

SLO_SLACK = 1.5
ALL_SYSTEMS = ["CPU", "GPU", "MIX", "Fetch", "Remoe", "Remoe-oracle"]


@dataclass(frozen=True)
class Plan:
    """How much of each workload a model gets."""

    requests: int
    new_tokens: int
    sweep_chars: tuple[int, ...] = ()
    sweep_outputs: tuple[int, ...] = ()
    sweep_per_cell: int = 0
    bursts: int = 0
    burst_tokens: int = 16
    function_ttl_s: float = 60.0
    idle_gap_s: float = 120.0  # between bursts: longer than the TTL plus a burst's own run time
    warm_prompts: int = 100


QUICK = {"tiny": Plan(8, 32, (64, 500), (8, 32), 1, 2, 16, 3.0, 12.0, 20)}
FULL = {
    "tiny": Plan(50, 200, (64, 400, 900), (16, 64, 192), 2, 5, 32, 5.0, 25.0, 200),
    "medium": Plan(50, 64, warm_prompts=50),  # 50 requests per system: ~20 min a model on 2 cores
    "gpt2-moe": Plan(50, 64, warm_prompts=30),
    "deepseek-v2-lite": Plan(50, 32, warm_prompts=10),  # 50: p99 and SLO attainment mean something
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def case(name: str, quick: bool) -> models.ModelCase:
    if name == "tiny":
        return models.tiny(minutes=1.5 if quick else 8)
    if name == "medium":
        return models.medium()
    tokenizer = models.tiny(minutes=1.5 if quick else 8).path
    return models.paper_shape(name, 4 if name == "deepseek-v2-lite" else 6, tokenizer)


def evaluate(
    model: models.ModelCase,
    plan: Plan,
    texts: list[str],
    train: list[str],
    work: Path,
    slack: float = SLO_SLACK,
    expert_dtype: str | None = None,
) -> dict:
    from remoe.model.engine import LocalEngine

    setting = profiled_setting(model, plan, train, work)
    shape, profile_path = setting.shape, setting.profile_path
    loads = [workloads.paper(texts, plan.requests, plan.new_tokens)]
    if plan.sweep_per_cell:
        loads += workloads.ratio_sweep(texts, list(plan.sweep_chars), list(plan.sweep_outputs), plan.sweep_per_cell)
    idle_s = plan.idle_gap_s
    if plan.bursts:
        loads.append(workloads.bursty(texts[plan.requests :], plan.bursts, plan.burst_tokens, idle_s))

    log(f"{model.name}: actual prefill activations of {sum(len(w.requests) for w in loads)} requests (oracle, Fetch)")
    engine = LocalEngine(model.path)
    frequencies, n_in = systems.prefill_frequencies(engine, [p for w in loads for p in w.prompts])
    context = engine.backbone.arch.config.max_position_embeddings
    loads = [w for w in (fit_context(w, n_in, context) for w in loads) if w.requests]

    runs: list[systems.Run] = []
    log(f"{model.name}: MIX (sets the SLO)")
    runs += systems.serve("MIX", setting, loads)
    mix = runs[0].results
    setting.slo_ttft_s = slack * statistics.median(r.ttft_s for r in mix)
    setting.slo_tpot_s = slack * statistics.median(r.tpot_s for r in mix)
    log(f"{model.name}: SLO TTFT {setting.slo_ttft_s * 1e3:.1f} ms, TPOT {setting.slo_tpot_s * 1e3:.2f} ms")
    oracle_server, oracle_address = systems.start_oracle(model.path, frequencies)
    try:
        for system in ("GPU", "Remoe", "Remoe-oracle"):
            log(f"{model.name}: {system}")
            runs += systems.serve(system, setting, loads, oracle_address)
    finally:
        oracle_server.server.stop(0)
    log(f"{model.name}: CPU (whole model in one process)")
    runs += [systems.cpu(setting, w, engine) for w in loads]
    engine.close()  # its experts would stay held in this process (the next CPU run samples it) until a full gc
    runs += [systems.fetch(setting, w, frequencies, [n_in[p] for p in w.prompts]) for w in loads]
    quantized = None
    if expert_dtype:
        quantized = evaluate_quantized(model, expert_dtype, plan, setting, loads[0], train, work)
    return {
        "model": model.name,
        "path": str(model.path),
        "note": model.note,
        "shape": shape.as_dict(),
        "plan": asdict(plan),
        "profile": json.loads(profile_path.read_text()),
        "slo_ttft_s": setting.slo_ttft_s,
        "slo_tpot_s": setting.slo_tpot_s,
        "latency_at": "client",  # TTFT/TPOT as the SDK saw them (results before this key: the backbone's clock)
        "idle_gap_s": idle_s,
        "burst_starts": workloads.burst_starts(loads[-1], idle_s) if loads[-1].name == "bursty" else [],
        "runs": [run_payload(run) for run in runs],
        "quantized": quantized,
    }


def profiled_setting(model: models.ModelCase, plan: Plan, train: list[str], work: Path) -> systems.Setting:
    """`remoe profile --quick` of the model, its end-to-end latencies timed as long as a full profile's (the cost
    model is checked against them), and the setting every system of it shares (SLO unset)."""
    work.mkdir(parents=True, exist_ok=True)
    profile_path = work / "profile.json"
    log(f"{model.name}: remoe profile (quick, {DECODE_SAMPLE_S:g} s of decode per configuration)")
    run_dir = work / "profile"
    profile_model(model.path, quick=True, progress=False, run_dir=run_dir, min_decode_s=DECODE_SAMPLE_S).save(
        profile_path
    )
    profile: Profile = load_profile(profile_path)
    setting = systems.Setting(
        model.path,
        shape_of_model(model.path),
        profile,
        profile_path,
        Prices(),
        function_ttl_s=plan.function_ttl_s,
        run_dir=work,
    )
    setting.warm_prompts = [t[: workloads.PROMPT_CHARS] for t in train[: plan.warm_prompts]]
    return setting


QUANTIZED_SYSTEMS = ("MIX", "Remoe", "Remoe-oracle")  # served from the quantized split; CPU below, in process


def run_payload(run: systems.Run) -> dict:
    return {
        **{k: v for k, v in asdict(run).items() if k != "results"},
        "hit_rate": run.hit_rate,
        "results": [asdict(r) for r in run.results],
    }


def evaluate_quantized(
    model: models.ModelCase,
    expert_dtype: str,
    plan: Plan,
    exact: systems.Setting,
    paper: workloads.Workload,
    train: list[str],
    work: Path,
) -> dict:
    """The paper workload again with the model's experts split to `expert_dtype`, at the exact model's SLO: CPU,
    MIX, Remoe and Remoe-oracle (GPU keeps the checkpoint's dtype on its device; Fetch is modelled), each
    measured as the exact runs are, so a request's cost is side by side with the exact experts'."""
    from remoe.model.engine import LocalEngine

    case = models.quantized(model, expert_dtype)
    setting = profiled_setting(case, plan, train, work / expert_dtype)
    setting.slo_ttft_s, setting.slo_tpot_s = exact.slo_ttft_s, exact.slo_tpot_s
    log(f"{case.name}: actual prefill activations (oracle)")
    engine = LocalEngine(case.path)
    frequencies, _ = systems.prefill_frequencies(engine, paper.prompts)
    runs: list[systems.Run] = []
    oracle_server, oracle_address = systems.start_oracle(case.path, frequencies)
    try:
        for system in QUANTIZED_SYSTEMS:
            log(f"{case.name}: {system}")
            runs += systems.serve(system, setting, [paper], oracle_address)
    finally:
        oracle_server.server.stop(0)
    log(f"{case.name}: CPU (whole model in one process)")
    runs.append(systems.cpu(setting, paper, engine))
    engine.close()
    return {
        "expert_dtype": expert_dtype,
        "group_size": models.QUANTIZED_GROUP if expert_dtype == "int4" else None,
        "model": case.name,
        "path": str(case.path),
        "shape": setting.shape.as_dict(),
        "profile": json.loads(setting.profile_path.read_text()),
        "runs": [run_payload(run) for run in runs],
    }


def fit_context(workload: workloads.Workload, n_in: dict[str, int], context: int) -> workloads.Workload:
    """The workload without requests whose prompt plus output exceed the model's context (logged)."""
    kept = [r for r in workload.requests if n_in[r.prompt] + r.new_tokens <= context]
    if len(kept) < len(workload.requests):
        log(f"{workload.name}: {len(workload.requests) - len(kept)} request(s) exceed the {context}-token context")
    return workloads.Workload(workload.name, kept, workload.concurrent)


def reprice(model: dict, prices: Prices) -> None:
    """Recompute the cost of the systems priced by formula (CPU, GPU, MIX) from their measured busy times, with
    the memory model as it is now: a report can follow a fix to the formula without measuring again."""
    _reprice_runs(model, prices)
    if model.get("quantized"):
        _reprice_runs(model["quantized"], prices)


def _reprice_runs(model: dict, prices: Prices) -> None:
    """`model`: a model's results or their quantized part (shape, profile, path and runs each)."""
    import tempfile

    shape = ModelShape(**model["shape"])
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump({"profile": model["profile"]["profile"]}, f)
        f.flush()
        profile = load_profile(f.name)
    setting = systems.Setting(Path(model["path"]), shape, profile, Path(f.name), prices)
    model_check.add_predictions(model["runs"], shape, profile, prices)
    for run in model["runs"]:
        if run["system"] in ("CPU", "GPU", "MIX"):
            for r in run["results"]:
                busy = r["ttft_s"] + max(0, r["n_out"] - 1) * r["tpot_s"]
                r["cost"] = systems.modelled_cost(setting, run["system"], None, r["n_in"], r["n_out"], busy)
        if run.get("resident") and run["results"]:
            raw = run["resident"]
            held = HeldMemory(
                {k: (v[0], v[1]) for k, v in raw["gb_s"].items()},
                raw["peak_gb"],
                raw["seconds"],
                {k: (v[0], v[1]) for k, v in raw.get("rss_gb_s", {}).items()},
                raw.get("basis", RSS_SUM),  # results from before frames were read: gb_s is the RSS sum
            )
            run["held_cost"] = systems.held_cost(run["system"], held, len(run["results"]), prices)
            run["held_rss_cost"] = systems.held_cost(run["system"], held.as_rss_sum(), len(run["results"]), prices)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluation", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, a short workload (under 10 minutes)")
    parser.add_argument("--models", nargs="*", help="a subset of: tiny medium gpt2-moe deepseek-v2-lite")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--report-only", action="store_true", help="reprice and rewrite the report from the JSON")
    parser.add_argument(
        "--slo-slack",
        type=float,
        default=SLO_SLACK,
        help=f"SLO = this x MIX's median TTFT and TPOT (default {SLO_SLACK}); another value writes its own files",
    )
    parser.add_argument(
        "--expert-dtype",
        choices=["int8", "int4"],
        help="also serve each model from a split with its experts in this format (int4: group 128), at the same "
        "SLO, in the same run: CPU, MIX, Remoe and Remoe-oracle on the paper workload, side by side",
    )
    parser.add_argument(
        "--quantized-only",
        action="store_true",
        help="with --expert-dtype and --models: serve only the quantized split, beside the exact runs the JSON "
        "already holds for each model, at their SLO (the report says they come from different runs)",
    )
    args = parser.parse_args()
    if not args.slo_slack > 0:
        parser.error("--slo-slack must be > 0")
    if args.quantized_only and not (args.expert_dtype and args.models):
        parser.error("--quantized-only needs --expert-dtype and --models")
    stem = "evaluation-quick" if args.quick else "evaluation"
    if args.slo_slack != SLO_SLACK:
        stem += f"-slo{args.slo_slack:g}"
    if args.report_only:
        results = json.loads((args.out / f"{stem}.json").read_text())
        for model in results["models"].values():
            reprice(model, Prices(**results["prices"]))
        (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=_plain) + "\n")
        report.write(results, args.out, stem)
        print((args.out / f"{stem}.md").read_text())
        return
    plans = QUICK if args.quick else FULL
    names = args.models or list(plans)
    corpus = models.corpus()
    texts, train = read_prompts(corpus / "test.jsonl"), read_prompts(corpus / "train.jsonl")
    if args.quantized_only:
        add_quantized(args.out, stem, names, plans, texts, train, args.quick, args.expert_dtype)
        return
    results = {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": source_commit(),
        "quick": args.quick,
        "prices": asdict(Prices()),
        "slo_slack": args.slo_slack,
        "models": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stem}.json"
    if path.is_file() and set(names) != set(plans):  # a subset: keep the other models' last results
        results["models"] = {k: v for k, v in _with_provenance(json.loads(path.read_text())).items() if k not in names}
    for name in names:
        work = models.CACHE / "runs" / name
        work.mkdir(parents=True, exist_ok=True)
        results["models"][name] = evaluate(
            case(name, args.quick), plans[name], texts, train, work, args.slo_slack, args.expert_dtype
        )
        results["models"][name].update({k: results[k] for k in PROVENANCE})
        reprice(results["models"][name], Prices(**results["prices"]))  # the cost model's predictions beside them
        path.write_text(json.dumps(results, indent=1, default=_plain) + "\n")
    report.write(results, args.out, stem)
    print((args.out / f"{stem}.md").read_text())


PROVENANCE = ("machine", "date", "commit")


def add_quantized(
    out: Path, stem: str, names: list[str], plans: dict, texts: list[str], train: list[str], quick: bool, dtype: str
) -> None:
    """Each model's quantized split served beside the exact runs `stem`.json already holds (same requests, same
    SLO), with this run's own machine, date and commit: for when the exact run takes too long to repeat."""
    path = out / f"{stem}.json"
    results = json.loads(path.read_text())
    for name in names:
        model = results["models"][name]
        plan = plans[name]
        paper = workloads.paper(texts, plan.requests, plan.new_tokens)
        exact = next(r for r in model["runs"] if r["workload"] == "paper")["results"]  # same corpus, same order
        if [len(paper.requests), plan.new_tokens] != [len(exact), exact[0]["n_out"]]:
            raise SystemExit(f"{name}: the paper workload differs from the exact runs' requests; rerun them too")
        exact_slo = SimpleNamespace(slo_ttft_s=model["slo_ttft_s"], slo_tpot_s=model["slo_tpot_s"])
        work = models.CACHE / "runs" / name
        quantized = evaluate_quantized(case(name, quick), dtype, plan, exact_slo, paper, train, work)  # type: ignore[arg-type]
        quantized["separate_run"] = {
            "machine": machine_description(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": source_commit(),
        }
        model["quantized"] = quantized
        reprice(model, Prices(**results["prices"]))
        path.write_text(json.dumps(results, indent=1, default=_plain) + "\n")
    report.write(results, out, stem)
    print((out / f"{stem}.md").read_text())


def _with_provenance(old: dict) -> dict:
    """An earlier run's models, each carrying the machine, date and commit it was measured with."""
    return {name: {**{k: old[k] for k in PROVENANCE}, **model} for name, model in old["models"].items()}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value)} is not JSON")


if __name__ == "__main__":
    main()
