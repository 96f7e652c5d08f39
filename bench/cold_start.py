"""Cold starts of the function layer, measured in one run on this machine.

1. One function's cold start to its first answer, started three ways: a fresh process (imports included: a bare
   serverless platform), forked from the runtime template on demand, and handed to a spare the template forked
   ahead (a pool of ready processes, refilled by fork: the local platform's default). On the tiny model (2
   experts) and on a DeepSeek-V2-Lite-shaped layer (8 experts of 17 MB, bf16). Beside it: a function that loads
   the whole checkpoint with transformers before answering.
2. A cold cluster (`remoe up --remote-ratio 0.5`, tiny model) from launch to its first request's first token: the
   backbone alone, and each runtime with the functions started after the backbone or during its start (the
   paper's overlap); then a cold request (every function scaled to zero, the `wait` policy) against a warm one.

Usage: python bench/cold_start.py [--repeats N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import MODELS, PROMPT, machine_description  # noqa: E402
from entrypoint_start import bench_entrypoint, import_seconds_by_package, model_dirs  # noqa: E402

from remoe.checkpoint.dtypes import resolve_dtype  # noqa: E402
from remoe.checkpoint.weights import ModelWeights, open_weights  # noqa: E402
from remoe.cluster import LocalCluster  # noqa: E402
from remoe.functions.config import FunctionConfig  # noqa: E402
from remoe.model.tiny import make_tiny_model  # noqa: E402
from remoe.model.tokenizer import load_tokenizer  # noqa: E402
from remoe.platform.inherited_env import function_environment  # noqa: E402
from remoe.platform.launcher import Launcher, PlainLauncher, TemplateLauncher  # noqa: E402
from remoe.proto import expert_pb2  # noqa: E402
from remoe.sdk import Client  # noqa: E402
from remoe.transport import tensor_codec  # noqa: E402
from remoe.transport.expert_stream import ExpertStream  # noqa: E402

# A whole-checkpoint function: what a function that does not load lazily spends before its first answer.
WHOLE_CHECKPOINT = """
import sys, time
t0 = time.time()
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype="auto")
experts = model.get_submodule(sys.argv[2])
with torch.inference_mode():
    x = torch.randn(1, model.config.hidden_size, dtype=model.dtype)
    experts(x, torch.tensor([[1]]), torch.ones(1, 1, dtype=model.dtype))
print(time.time() - t0)
"""
RUNTIMES = ("process", "fork", "pool")
BASE_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}  # as the local platform gives its functions


@dataclass
class FunctionCase:
    name: str
    path: Path
    layer: int
    experts: list[int]
    note: str


@dataclass
class FunctionRow:
    model: str
    experts: int
    expert_mb: float
    first_answer_s: dict  # runtime -> median seconds from the start request to the first answer
    breakdown: dict  # runtime -> the function's own cold-start breakdown (first run)
    rss_mb: dict  # runtime -> the instance's resident memory after its first answer (first run)
    template_rss_mb: float  # the runtime template's own resident memory once ready (first run)
    whole_checkpoint_first_answer_s: float


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _first_answer(
    case: FunctionCase, weights: ModelWeights, tmp: Path, launcher: Launcher
) -> tuple[float, dict, float]:
    """Start one instance through `launcher`, send it a batch that routes a token to each hosted expert, and return
    (seconds from the start request to the answer, the function's breakdown, its RSS in MiB)."""
    ready = tmp / "fn.port"
    ready.unlink(missing_ok=True)
    experts = [(case.layer, e) for e in case.experts]
    config = FunctionConfig(model_dir=case.path, experts=experts, name="bench", port=0, ready_file=ready)
    start = time.time()
    env = {**function_environment(), **BASE_ENV, **config.to_env(), "REMOE_SPAWNED_AT": repr(start)}
    proc = launcher.launch(env, tmp / "fn.log")
    try:
        while not ready.is_file():
            if proc.poll() is not None:
                raise RuntimeError(f"the function exited while starting (log {tmp / 'fn.log'})")
            time.sleep(0.002)
        breakdown = _answer_first_batch(case, weights, ready.read_text())
        elapsed = time.time() - start
        return elapsed, breakdown, _rss_mb(proc.pid)
    finally:
        proc.send_signal(15)
        proc.wait(10)


def _answer_first_batch(case: FunctionCase, weights: ModelWeights, port: str) -> dict:
    """Send a batch routing one token to each hosted expert (so every one loads); the function's breakdown."""
    stream = ExpertStream(f"127.0.0.1:{port}")
    try:
        dtype = resolve_dtype(weights.config, "auto")
        n = len(case.experts)
        batch = expert_pb2.ExpertBatch(
            layer=case.layer,
            hidden_states=tensor_codec.encode(torch.randn(n, weights.arch.hidden_size).to(dtype)),
            top_k_index=tensor_codec.encode(torch.tensor(case.experts).view(n, 1)),
            top_k_weights=tensor_codec.encode(torch.ones(n, 1, dtype=dtype)),
        )
        result = stream.submit(batch)[1].result(timeout=300)
        assert result.status_code == 0, result.error
        fields = stream.stats(10).cold_start.ListFields()
        return {f.name: round(v, 3) for f, v in fields if f.name != "complete"}
    finally:
        stream.close()


def _launcher(runtime: str, case: FunctionCase, tmp: Path) -> Launcher:
    """Fresh processes, or a template that is ready already (its own start is not part of an instance's cold start:
    the platform starts it once, with the first deployment)."""
    if runtime == "process":
        return PlainLauncher()
    env = {**function_environment(), **BASE_ENV}
    template = TemplateLauncher(case.path, env, tmp / "template.log", spares=1 if runtime == "pool" else 0)
    if not template.ready.wait(300) or template.ready_s is None:
        raise RuntimeError(f"the runtime template did not start (log {tmp / 'template.log'})")
    return template


def bench_knative_entrypoint(case: FunctionCase, tmp: Path, repeats: int) -> tuple[list[dict], dict]:
    """(rows, import seconds per package of the lean start and of the full start) for the entrypoint as a process."""
    weights = open_weights(case.path)
    experts = [(case.layer, e) for e in case.experts]
    rows = bench_entrypoint(
        case.name, case.path, experts, BASE_ENV, tmp, lambda port: _answer_first_batch(case, weights, port), repeats
    )
    dirs = model_dirs(case.path, tmp)
    imports = {
        label: import_seconds_by_package(dirs[label], experts, BASE_ENV, tmp)
        for label in ("split with the record (lean)", "split, no experts-math record")
    }
    return [asdict(r) for r in rows], imports


def bench_function(case: FunctionCase, tmp: Path, repeats: int) -> FunctionRow:
    weights = open_weights(case.path)
    times: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    breakdown: dict[str, dict] = {}
    rss: dict[str, float] = {}
    template_rss = 0.0
    for _ in range(repeats):
        for runtime in RUNTIMES:  # interleaved: the machine's load drifts
            launcher = _launcher(runtime, case, tmp)
            if runtime == "fork" and not template_rss:
                template_rss = _rss_mb(launcher.pid)
            try:
                elapsed, parts, mb = _first_answer(case, weights, tmp, launcher)
            finally:
                launcher.close()
            times[runtime].append(elapsed)
            breakdown.setdefault(runtime, parts)
            rss.setdefault(runtime, mb)
    whole = statistics.median(_whole_checkpoint_first_answer(case) for _ in range(repeats))
    expert_mb = weights.expert_nbytes(case.layer, case.experts[0]) / 2**20
    return FunctionRow(
        case.name,
        len(case.experts),
        round(expert_mb, 2),
        {r: round(statistics.median(t), 3) for r, t in times.items()},
        breakdown,
        rss,
        template_rss,
        round(whole, 2),
    )


def _whole_checkpoint_first_answer(case: FunctionCase) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    subprocess.run(
        [sys.executable, "-c", WHOLE_CHECKPOINT, str(case.path), f"model.layers.{case.layer}.mlp.experts"],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.time() - start


@dataclass
class ClusterRow:
    setting: str  # which runtime, and when the functions start
    functions: int
    up_s: float  # `remoe up` launched to the gateway answering
    launch_to_first_token_s: float  # launched to the first request's first token (sent once up, `wait` policy)
    cold_ttft_s: float  # after every function scaled to zero, a request that waits for their starts
    warm_ttft_s: float  # right after, every function warm
    startup: list[str]  # where the cluster's start went, per service (first run; remoe/server/startup.py)


TTL_S = 15.0  # functions scale to zero after this long idle (from when the backbone serves)
# (label, runtime, remote ratio, warm at start): the backbone alone, then each runtime with the functions started
# after the backbone (by the first request's pre-warm) or during its start (overlapped, the default).
CLUSTER_SETTINGS = [
    ("no functions (the backbone's own cold start)", "fork", 0.0, False),
    ("process start, functions after the backbone", "process", 0.5, False),
    ("process start, functions during the backbone's start", "process", 0.5, True),
    ("fork, functions after the backbone", "fork", 0.5, False),
    ("fork, functions during the backbone's start", "fork", 0.5, True),
]


def _ttft(client: Client, ids: list[int]) -> float:
    start = time.perf_counter()
    next(iter(client.stream(token_ids=ids, max_new_tokens=1)))
    return time.perf_counter() - start


def _cold_cluster(path: Path, runtime: str, remote_ratio: float, warm_at_start: bool) -> tuple:
    """(up, launch to first token, cold request TTFT, warm request TTFT, functions, startup) for a cluster started from
    nothing. Requests wait for cold starts here (the `wait` policy): this measures what a bare serverless deployment
    pays; by default Remoe computes a starting function's batches on an expert service instead."""
    ids = load_tokenizer(path).encode(PROMPT)
    env = {
        "REMOE_BACKBONE_FUNCTION_COLD_START": "wait",
        "REMOE_BACKBONE_FUNCTION_RUNTIME": runtime,
        "REMOE_BACKBONE_FUNCTION_WARM_AT_START": str(warm_at_start).lower(),
    }
    launched = time.perf_counter()
    with LocalCluster(path, port=0, remote_ratio=remote_ratio, function_ttl_s=TTL_S, env=env) as cluster:
        up = time.perf_counter() - launched
        startup = cluster.startup_breakdown()
        client = Client(cluster.address)
        _ttft(client, ids)
        first = time.perf_counter() - launched
        functions = len({f.function for f in client.status().backbone.functions})
        cold = warm = 0.0
        if functions:
            deadline = time.monotonic() + 120
            while any(f.state != "cold" for f in client.status().backbone.functions):
                if time.monotonic() > deadline:
                    raise RuntimeError("the functions did not scale to zero")
                time.sleep(0.2)
            cold = _ttft(client, ids)
            warm = _ttft(client, ids)
    return up, first, cold, warm, functions, startup


def bench_cluster(path: Path, repeats: int) -> list[ClusterRow]:
    runs: dict[str, list[tuple[float, ...]]] = {label: [] for label, *_ in CLUSTER_SETTINGS}
    for _ in range(repeats):
        for label, runtime, ratio, warm_at_start in CLUSTER_SETTINGS:  # interleaved: the machine's load drifts
            _log(f"  {label} ...")
            runs[label].append(_cold_cluster(path, runtime, ratio, warm_at_start))
    rows = []
    for label, results in runs.items():
        up, first, cold, warm = (statistics.median(r[i] for r in results) for i in range(4))
        rows.append(
            ClusterRow(
                label, int(results[0][4]), round(up, 2), round(first, 2), round(cold, 3), round(warm, 3), results[0][5]
            )
        )
    return rows


def deepseek_layer(tmp: Path) -> FunctionCase:
    """DeepSeek-V2-Lite's shape with 2 layers (one dense, one MoE of 64 experts of 17 MB, bf16), random init; a
    small vocabulary (the function reads only experts)."""
    from transformers import AutoModelForCausalLM

    from remoe.scheduler.shape import paper_model_config

    out = tmp / "deepseek-v2-lite-2l"
    config, dtype = paper_model_config("deepseek-v2-lite", 2)
    config.vocab_size = 1024
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(out)
    return FunctionCase("DeepSeek-V2-Lite-shaped", out, 1, list(range(8)), "layer 1, experts 0-7, bf16")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cluster_ratios(rows: list[dict]) -> list[str]:
    by = {r["setting"]: r for r in rows}
    alone = by[CLUSTER_SETTINGS[0][0]]["launch_to_first_token_s"]
    t = {label: by[label]["launch_to_first_token_s"] for label, *_ in CLUSTER_SETTINGS}
    p_after, p_during, f_after, f_during = (t[label] for label, *_ in CLUSTER_SETTINGS[1:])
    cold_warm = "; ".join(
        f"{r['setting'].split(',')[0]}: {r['cold_ttft_s'] - r['warm_ttft_s']:+.3f} s"
        for r in rows
        if "during" in r["setting"]
    )
    # The best any overlap can do: the functions' own starts (what starting them after the backbone added) hidden
    # entirely behind the cluster's, max(main, functions) / (main + functions), however many cores there were.
    added = max(0.0, p_after - alone)  # a noisy run may put it below the backbone alone
    best = max(alone, added) / (alone + added)
    return [
        f"Overlap, process start: {p_during / p_after:.2f}x the launch-to-first-token of starting the functions after",
        f"the backbone (the paper: 0.53x). Fork: {f_during / f_after:.2f}x. With fork and overlap, the functions add",
        f"{f_during / alone - 1:+.0%} to the backbone's own cold start ({f_during} s vs {alone} s without functions).",
        f"A cold request under `wait` minus a warm one: {cold_warm}.",
        f"Started after the backbone, fresh-process functions added {added:.1f} s to its {alone:.1f} s, so even a",
        f"perfect overlap (every function's start hidden behind the cluster's own) gives {best:.2f}x at best here;",
        "the paper's 0.53x needs function starts about as long as the main model's, on hosts of their own.",
    ]


def report(results: dict) -> str:
    f, c = results["function"], results["cluster"]
    lines = [
        "# Function cold starts (CPU, loopback)",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}. Commit: {results['commit']}. One run; medians of "
        f"{results['repeats']} (the ways interleaved).",
        "",
        "## A function's cold start to its first answer, three ways to start it",
        "",
        "From the platform's start request to the answer of a first batch that routes one token to each hosted",
        "expert (so every one loads). *process*: a fresh `python -m remoe.functions.expert` (imports included, as",
        "a bare serverless platform starts one); *fork*: forked on demand from the runtime template, which had",
        "imported everything; *pool*: handed to a spare child the template had forked ahead, which waits for its",
        "configuration (the template forks the next spare after it): the local platform's default.",
        "",
        "| function | experts | expert (MiB) | process (s) | fork (s) | pool (s) | process / pool "
        "| whole checkpoint (s) |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['experts']} | {r['expert_mb']} | {r['first_answer_s']['process']} "
            f"| {r['first_answer_s']['fork']} | {r['first_answer_s']['pool']} "
            f"| {r['first_answer_s']['process'] / r['first_answer_s']['pool']:.1f}x "
            f"| {r['whole_checkpoint_first_answer_s']} |"
            for r in f
        ],
        "",
        "Resident memory of the instance after its first answer (MiB; a fork shares the template's pages until",
        "written, RSS counts them anyway): "
        + "; ".join(f"{r['model']}: {r['rss_mb']}" for r in f)
        + ". The runtime template itself holds "
        + ", ".join(f"{r['template_rss_mb']} MiB ({r['model']})" for r in f)
        + " while any function is deployed (with a spare child beside it): memory the local platform's budget"
        " does not count.",
        "",
        "The function's own breakdown (seconds, first run): process_start is the start request to the instance's",
        "first line of Python (a fork: the fork), imports what it still imported itself:",
        "",
        *[f"- {r['model']}, {way}: {parts}" for r in f for way, parts in r["breakdown"].items()],
        "",
        *entrypoint_report(results),
        "## A cold cluster's first request, and cold vs warm requests (`remoe up --remote-ratio 0.5`, tiny model)",
        "",
        *(
            [f"This section was rerun on its own (--clusters-only): commit {results['cluster_run']}.", ""]
            if results.get("cluster_run")
            else []
        ),
        "From launching `remoe up` (gateway, backbone, two expert services, the predictor; functions for half of",
        "each layer's experts) to the first token of a request sent as soon as the gateway answers, under the",
        "`wait` policy (a request waits for its functions' cold starts). The functions start either with the",
        "first request (its pre-warm) or while the backbone loads the model (REMOE_BACKBONE_FUNCTION_WARM_AT_START,",
        f"the default). Then, once every function has scaled to zero ({TTL_S:g} s idle), a cold request that waits",
        "for their starts and a warm one right after.",
        "",
        "| setting | functions | up (s) | launch to first token (s) | cold request TTFT (s) | warm request TTFT (s) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['setting']} | {r['functions']} | {r['up_s']} | {r['launch_to_first_token_s']} "
            f"| {r['cold_ttft_s'] or '-'} | {r['warm_ttft_s'] or '-'} |"
            for r in c
        ],
        "",
        *cluster_ratios(c),
        "",
        "Where each cluster's start went (first run; seconds after launch, then each service's own record: its",
        "process creation, its imports, its init steps). Every service is spawned at launch; the backbone and the",
        "gateway import meanwhile and wait for the services they talk to. The functions' runtime template starts",
        'when the backbone deploys them (its "start functions" step), so its own imports run after the backbone\'s:',
        "with fork and overlap, that is what the functions add to the first token. Through the experts record the",
        'backbone writes (its "experts record" step) the template imports torch but not transformers.',
        "",
        *[f"- {r['setting']}:\n" + "\n".join(f"  - {line}" for line in r.get("startup", [])) for r in c],
    ]
    return "\n".join(lines) + "\n"


def entrypoint_report(results: dict) -> list[str]:
    if "entrypoint" not in results:
        return []
    rows, imports = results["entrypoint"], results["entrypoint_imports"]
    return [
        "## The Knative entrypoint as a plain process (no container here)",
        "",
        "`python -m remoe.functions.expert` started fresh, as the function image runs it: seconds from the start to",
        "health SERVING (the readiness probe's answer) and to the first batch's answer. Pointed at the original",
        "checkpoint or at a split made before the experts-math record, it opens the weights with transformers (the",
        "meta skeleton tells it the experts' class and shapes); at a split with the record (`remoe split` writes it",
        "where every layer's experts are gated SiLU) it reads the manifest instead and never imports transformers.",
        "",
        "| function | weights | transformers imported | start to SERVING (s) | start to first answer (s) "
        "| imports (s) |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['weights']} | {'yes' if r['transformers_imported'] else 'no'} | {r['ready_s']} "
            f"| {r['first_answer_s']} | {r['imports_s']} |"
            for r in rows
        ],
        "",
        "Where the imports' time goes (self time per top-level package under `python -X importtime`, which inflates",
        "it a little; one run, seconds):",
        "",
        *[f"- {model}, {label}: {per}" for model, by in imports.items() for label, per in by.items()],
        "",
    ]


def write(results: dict, out: Path) -> None:
    table = report(results)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cold_start.md").write_text(table)
    (out / "cold_start.json").write_text(json.dumps(results, indent=2) + "\n")


def _commit() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "remoe", "bench"], capture_output=True, text=True)
    return (commit.stdout.strip() or "unknown") + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    parser.add_argument("--report-only", action="store_true", help="rewrite cold_start.md from cold_start.json")
    parser.add_argument(
        "--clusters-only",
        action="store_true",
        help="rerun only the cold clusters through remoe up; the other sections stay as cold_start.json has them",
    )
    args = parser.parse_args()
    if args.clusters_only:
        results = json.loads((args.out / "cold_start.json").read_text())
        with tempfile.TemporaryDirectory() as tmp_name:
            tiny = make_tiny_model(MODELS["tiny"], Path(tmp_name) / "tiny")
            _log("cold clusters through remoe up ...")
            results["cluster"] = [asdict(r) for r in bench_cluster(tiny, args.repeats)]
        results["cluster_run"] = f"{_commit()}, {time.strftime('%Y-%m-%d')}, medians of {args.repeats}"
        write(results, args.out)
        return
    if args.report_only:
        write(json.loads((args.out / "cold_start.json").read_text()), args.out)
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tiny = make_tiny_model(MODELS["tiny"], tmp / "tiny")
        _log("making a DeepSeek-V2-Lite-shaped layer (1.1 GB of bf16 experts) ...")
        cases = [FunctionCase("tiny", tiny, 0, [1, 2], "layer 0, experts 1-2, float32"), deepseek_layer(tmp)]
        function_rows, entry_rows, entry_imports = [], [], {}
        for case in cases:
            _log(f"function cold starts: {case.name}, {len(case.experts)} experts, {' / '.join(RUNTIMES)} ...")
            function_rows.append(bench_function(case, tmp, args.repeats))
            _log(f"the Knative entrypoint as a process: {case.name} ...")
            rows, entry_imports[case.name] = bench_knative_entrypoint(case, tmp, args.repeats)
            entry_rows += rows
        _log("cold clusters through remoe up ...")
        cluster_rows = bench_cluster(tiny, args.repeats)

    results = {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "repeats": args.repeats,
        "function": [asdict(r) for r in function_rows],
        "cluster": [asdict(r) for r in cluster_rows],
        "entrypoint": entry_rows,
        "entrypoint_imports": entry_imports,
    }
    write(results, args.out)


if __name__ == "__main__":
    main()
