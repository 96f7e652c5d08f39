"""Warm-aware plans against plans that ignore what runs, on the evaluation's DeepSeek-V2-Lite-shaped workload.

One run on this machine: the evaluation's DeepSeek-V2-Lite shape (4 layers, bf16, random init), its profile
(`remoe profile --quick`), the SLO set as the evaluation sets it (1.5x MIX's median TTFT and TPOT on 5 of the
prompts), then Remoe served twice on the same `--requests` corpus prompts (first 500 characters, 32 tokens out,
one after another, after the same 10 warm-up prompts): with the gateway's warm-aware plans off (the paper's
per-request plans) and on. Per setting: functions started (instance cold starts) and distinct functions named,
per 50 requests; the ledger's cost (what the metering bills: main memory x busy time + each function's memory x
its compute time); the function memory actually held (instances starting or warm, sampled every 0.5 s, GB-s);
TTFT, TPOT and the SLO met. Three settings: plans that ignore what runs, warm-aware plans that start new
functions as if the memory budget were theirs alone, and warm-aware plans that also pay the cold starts of the
running functions their new ones evict (the default).

Usage: python bench/warm_plans.py [--requests 50] [--reuse-profile] [--slo-ms TTFT TPOT] [--out docs/results]
  --reuse-profile: the profile an earlier run of this bench wrote (skips 8 minutes of profiling here)
  --slo-ms: this SLO instead of measuring MIX (e.g. the one an earlier run printed)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.evaluation import models, systems, workloads  # noqa: E402
from bench.evaluation.__main__ import case  # noqa: E402
from remoe.cluster import LocalCluster  # noqa: E402
from remoe.corpus.build import read_prompts  # noqa: E402
from remoe.machine import machine_description  # noqa: E402
from remoe.profiling.profile import profile_model  # noqa: E402
from remoe.scheduler.ledger import Ledger  # noqa: E402
from remoe.scheduler.problem import Prices  # noqa: E402
from remoe.scheduler.profile_file import load_profile  # noqa: E402
from remoe.scheduler.shape import shape_of_model  # noqa: E402
from remoe.sdk import Client  # noqa: E402

MODEL = "deepseek-v2-lite"
NEW_TOKENS = 32
WARM_PROMPTS = 10
SLO_SLACK = 1.5
# label -> (tag, env): the paper's per-request plans; warm-aware plans that reuse running functions but start new
# ones as if the budget were theirs alone; and warm-aware plans that also pay the restarts of what they evict.
SETTINGS = {
    "plans ignore what runs": ("plain", {"REMOE_GATEWAY_WARM_AWARE_PLANS": "false"}),
    "warm-aware, evictions free": (
        "aware-free",
        {"REMOE_GATEWAY_WARM_AWARE_PLANS": "true", "REMOE_SCHEDULER_PRICE_EVICTIONS": "false"},
    ),
    "warm-aware, evictions priced": (
        "aware",
        {"REMOE_GATEWAY_WARM_AWARE_PLANS": "true", "REMOE_SCHEDULER_PRICE_EVICTIONS": "true"},
    ),
}


@dataclass
class Row:
    setting: str
    requests: int
    cold_starts: int  # function instances started while the workload ran
    functions_named: int  # distinct functions the backbone listed by the end
    ledger_cost: float  # $ over the workload's requests, as metered
    held_gb_s: float  # function memory held (starting or warm) while the workload ran
    held_cost: float  # held_gb_s at the CPU price
    resident_cost: float | None  # $ per request: what every process held (from /proc, each page once), priced
    ttft_p50_ms: float
    tpot_p50_ms: float
    slo_met: float
    wall_s: float

    @property
    def starts_per_50(self) -> float:
        return self.cold_starts * 50 / self.requests


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def serve(label: str, tag: str, env: dict[str, str], setting: systems.Setting, workload: workloads.Workload) -> Row:
    kwargs = systems.cluster_kwargs("Remoe", setting, None)
    with LocalCluster(setting.model, run_dir=setting.run_dir / f"warm-{tag}", env=env, **kwargs) as cluster:
        with Client(cluster.address, timeout=600) as client:
            for j, prompt in enumerate(setting.warm_prompts):
                client.generate(prompt=prompt, max_new_tokens=1, request_id=f"warm-{tag}-{j}")
            roots = {s.name: s.process.pid for s in cluster.services if s.process is not None}
            started = time.monotonic()
            run = systems._serve_workload(f"Remoe-{tag}", setting, workload, client, roots)
            wall = time.monotonic() - started
            names = {f.function for f in client.status().backbone.functions}
        time.sleep(1.0)  # the gateway appends to the ledger after the last token
        metered = {r.request_id: r for r in Ledger(cluster.redis_url).read()}
    costs = [metered[f"Remoe-{tag}-{workload.name}-{r.index}"].cost for r in run.results]
    held = run.held_gb_s + run.held_at_end_mb / 1024 * setting.function_ttl_s  # and its idle tail to scale-to-zero
    run.price_resident(setting.prices)
    ok = [r.ttft_s <= setting.slo_ttft_s and r.tpot_s <= setting.slo_tpot_s for r in run.results]
    return Row(
        label,
        len(run.results),
        run.cold_starts,
        len(names),
        sum(costs),
        held,
        held * setting.prices.cpu_gb_s,
        run.held_cost,
        statistics.median(r.ttft_s for r in run.results) * 1e3,
        statistics.median(r.tpot_s for r in run.results) * 1e3,
        sum(ok) / len(ok),
        wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50, help="corpus prompts per setting (default 50)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--reuse-profile", action="store_true", help="the profile an earlier run wrote, if any")
    parser.add_argument("--slo-ms", type=float, nargs=2, metavar=("TTFT", "TPOT"), help="skip MIX: this SLO")
    args = parser.parse_args()
    corpus = models.corpus()
    texts, train = read_prompts(corpus / "test.jsonl"), read_prompts(corpus / "train.jsonl")
    model = case(MODEL, quick=True)
    work = models.CACHE / "runs" / "warm-plans"
    work.mkdir(parents=True, exist_ok=True)
    profile_path = work / "profile.json"
    if not (args.reuse_profile and profile_path.is_file()):
        log(f"{model.name}: remoe profile (quick)")
        profile_model(model.path, quick=True, progress=False, run_dir=work / "profile").save(profile_path)
    setting = systems.Setting(
        model.path, shape_of_model(model.path), load_profile(profile_path), profile_path, Prices(), run_dir=work
    )
    setting.warm_prompts = [t[: workloads.PROMPT_CHARS] for t in train[:WARM_PROMPTS]]
    if args.slo_ms:
        setting.slo_ttft_s, setting.slo_tpot_s = (ms / 1e3 for ms in args.slo_ms)
    else:
        log("MIX on 5 prompts (sets the SLO as the evaluation does)")
        mix = systems.serve("MIX", setting, [workloads.paper(texts, 5, NEW_TOKENS)])[0].results
        setting.slo_ttft_s = SLO_SLACK * statistics.median(r.ttft_s for r in mix)
        setting.slo_tpot_s = SLO_SLACK * statistics.median(r.tpot_s for r in mix)
    log(f"SLO TTFT {setting.slo_ttft_s * 1e3:.1f} ms, TPOT {setting.slo_tpot_s * 1e3:.2f} ms")
    workload = workloads.paper(texts, args.requests, NEW_TOKENS)
    rows = []
    for label, (tag, env) in SETTINGS.items():
        log(f"Remoe, {label}: {args.requests} requests")
        rows.append(serve(label, tag, env, setting, workload))
        log(f"  {rows[-1]}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "remoe", "bench"], capture_output=True, text=True)
    results = {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit + (" (uncommitted changes)" if dirty.stdout.strip() else ""),
        "model": model.name,
        "slo_ttft_s": setting.slo_ttft_s,
        "slo_tpot_s": setting.slo_tpot_s,
        "slo_from": (
            "given with --slo-ms (1.5x MIX's median in an earlier run)"
            if args.slo_ms
            else "1.5x MIX's median, 5 prompts, this run"
        ),
        "profile_cold_start_s": setting.profile.cold_start_s,
        "rows": [asdict(r) | {"starts_per_50": r.starts_per_50} for r in rows],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "warm_plans.json").write_text(json.dumps(results, indent=1) + "\n")
    write(results, args.out)
    print((args.out / "warm_plans.md").read_text())


def write(results: dict, out: Path) -> None:
    rows = results["rows"]
    base, aware = rows[0], rows[-1]
    lines = [
        "# Warm-aware plans: functions started and what they cost",
        "",
        f"Machine: {results['machine']}. {results['date']}, commit {results['commit']}. One run.",
        f"{results['model']}, random init; the evaluation's paper workload: {base['requests']} corpus prompts",
        f"(first 500 characters), {NEW_TOKENS} tokens out, one after another, after {WARM_PROMPTS} warm-up prompts.",
        f"SLO ({results['slo_from']}): TTFT {results['slo_ttft_s'] * 1e3:.1f} ms,"
        f" TPOT {results['slo_tpot_s'] * 1e3:.2f} ms. Profile cold start {results['profile_cold_start_s']:.3f} s.",
        "",
        "Ledger cost: what the metering bills (main memory x busy time, each function's memory x its compute time).",
        "Held: function memory actually held while the workload ran (instances starting or warm, sampled every",
        "0.5 s), plus what was held at its end for one more keep-alive (the idle time before scale to zero), priced",
        "at the CPU rate. All processes held: what every process of the cluster held (sampled from /proc, each",
        "page once; the backbone at the GPU price, the rest at the CPU price), per request. The start and",
        "eviction prices the warm-aware plans weigh are modelled; everything in this table is measured.",
        "",
        "| setting | functions started per 50 requests | distinct functions | ledger $ | function GB-s held | "
        "function memory held $ | ledger + held $ | all processes held $ per request | TTFT p50 (ms) | "
        "TPOT p50 (ms) | SLO met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['starts_per_50']:.1f} | {r['functions_named']} | {r['ledger_cost']:.6f} | "
            f"{r['held_gb_s']:.1f} | {r['held_cost']:.6f} | {r['ledger_cost'] + r['held_cost']:.6f} | "
            f"{'-' if r.get('resident_cost') is None else format(r['resident_cost'], '.3g')} | "
            f"{r['ttft_p50_ms']:.1f} | {r['tpot_p50_ms']:.2f} | {r['slo_met']:.0%} |"
        )
    cost_ratio = (aware["ledger_cost"] + aware["held_cost"]) / (base["ledger_cost"] + base["held_cost"])
    lines += [
        "",
        f"Functions started per 50 requests: {aware['starts_per_50']:.1f} with {aware['setting']},"
        f" {base['starts_per_50']:.1f} with {base['setting']}; the measured cost (ledger + function memory held)"
        f" is {cost_ratio:.2f}x.",
    ]
    (out / "warm_plans.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
