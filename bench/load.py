"""Load: concurrent SDK clients through `remoe up` with functions, every answer checked token by token.

For each concurrency level, N client threads (one SDK Client each) send a bounded number of requests through a
LocalCluster (two expert services, half of every layer's experts in functions, predictor and metering ledger on
a real redis-server). Every answer is compared with transformers' own greedy tokens for its prompt. Reported:
throughput, TTFT/TPOT p50/p99, errors by status, refusals at the gateway's admission limit (retried after the
gateway's hint, as a client should), and the metering ledger's records for the run (lost = answered but not
metered; doubled = metered twice). With --kill-function (default) one function replica is SIGKILLed halfway
through every level.

Each concurrency level runs twice in one run, on two clusters: with the backbone's continuous batching (the
default) and without it (REMOE_BACKBONE_BATCHING=off: each request its own forwards), so the ratios compare
like with like on the same machine at the same time. Beside throughput and latency, each level reports the mean
ledger cost of a request and how many requests shared its forwards.

    python -m bench.load [--clients 1 8 32] [--requests 0] [--new-tokens 16] [--max-requests 64]
                         [--batching both|on|off] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from remoe.cluster import LocalCluster
from remoe.machine import machine_description
from remoe.model.tiny import TinySpec, make_tiny_model
from remoe.scheduler.ledger import Ledger
from remoe.sdk import Client, RemoeRpcError, ResourceExhausted

ROOT = Path(__file__).resolve().parent.parent
MODEL_SPEC = TinySpec("olmoe", layers=3, experts=8, top_k=3, seed=0)
PROMPTS = 12  # distinct prompts, reused round-robin
MAX_RETRIES = 50  # refusals a client retries before giving up on a request
SHOWN_WHILE_RUNNING = ("ok", "wrong_tokens", "errors", "requests_per_s", "tokens_per_s", "ttft_p50_ms", "tpot_p50_ms")


@dataclass
class Outcome:
    request_id: str
    ok: bool
    status: str  # "OK" or the gRPC status name
    wrong_tokens: bool = False
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    tokens: int = 0
    refusals: int = 0  # RESOURCE_EXHAUSTED answers before it was admitted


@dataclass
class Level:
    batching: str  # "on" or "off"
    clients: int
    requests: int
    wall_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # function replicas SIGKILLed during the level
    metered: int = 0  # ledger records of this level's requests
    lost: int = 0  # answered but not in the ledger
    doubled: int = 0  # request ids metered more than once
    cost_per_request: float = 0.0  # mean ledger cost of this level's requests
    main_s_per_request: float = 0.0  # mean backbone seconds billed per request
    mean_step_requests: float = 0.0  # mean over requests of the requests per forward they were in
    busy_s: float = 0.0  # the backbone's time in forwards during the level (its Status; batching on only)
    billed_main_s: float = 0.0  # the level's records' main_s summed (== busy_s when every forward is billed)

    def summary(self) -> dict:
        ok = [o for o in self.outcomes if o.ok]
        ttft = [o.ttft_s for o in ok] or [float("nan")]
        tpot = [o.tpot_s for o in ok] or [float("nan")]
        return {
            "batching": self.batching,
            "clients": self.clients,
            "requests": self.requests,
            "ok": len(ok),
            "wrong_tokens": sum(o.wrong_tokens for o in self.outcomes),
            "errors": dict(Counter(o.status for o in self.outcomes if not o.ok)),
            "refusals_retried": sum(o.refusals for o in self.outcomes),
            "requests_per_s": len(ok) / self.wall_s,
            "tokens_per_s": sum(o.tokens for o in ok) / self.wall_s,
            "ttft_p50_ms": float(np.percentile(ttft, 50) * 1e3),
            "ttft_p99_ms": float(np.percentile(ttft, 99) * 1e3),
            "tpot_p50_ms": float(np.percentile(tpot, 50) * 1e3),
            "tpot_p99_ms": float(np.percentile(tpot, 99) * 1e3),
            "killed": self.killed,
            "metered": self.metered,
            "lost_records": self.lost,
            "doubled_records": self.doubled,
            "cost_per_request": self.cost_per_request,
            "main_s_per_request": self.main_s_per_request,
            "mean_step_requests": self.mean_step_requests,
            "busy_s": self.busy_s,
            "billed_main_s": self.billed_main_s,
        }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_dir() -> Path:
    out = ROOT / ".cache" / "bench" / "load-olmoe"
    if not (out / "config.json").is_file():
        make_tiny_model(MODEL_SPEC, out)
    return out


def prompts_and_references(model: Path, new_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Seeded token-id prompts of 8-48 tokens and transformers' greedy continuation of each."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(PROMPTS):
        ids = [int(t) for t in rng.integers(3, MODEL_SPEC.vocab, size=int(rng.integers(8, 49)))]
        with torch.inference_mode():
            out = reference.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False)
        pairs.append((ids, out[0, len(ids) :].tolist()))
    return pairs


def one_request(client: Client, request_id: str, ids: list[int], expected: list[int], new_tokens: int) -> Outcome:
    refusals = 0
    while True:
        try:
            result = client.generate(token_ids=ids, max_new_tokens=new_tokens, request_id=request_id)
        except ResourceExhausted as e:
            refusals += 1
            if refusals > MAX_RETRIES:
                return Outcome(request_id, False, e.code.name, refusals=refusals)
            time.sleep((e.retry_after_s or 0.5) * random.uniform(0.5, 1.5))  # jitter: refused clients spread out
            continue
        except RemoeRpcError as e:
            return Outcome(request_id, False, e.code.name, refusals=refusals)
        u = result.usage
        wrong = result.token_ids != expected
        return Outcome(
            request_id,
            not wrong,
            "WRONG_TOKENS" if wrong else "OK",
            wrong,
            u.ttft_s,
            u.tpot_s,
            len(result.token_ids),
            refusals,
        )


def kill_a_function_replica(cluster: LocalCluster) -> str | None:
    """SIGKILL one warm function replica (found by the backbone's status, its pid checked to be a function
    process: a stale pid file must not kill anything else); None when none is warm."""
    with Client(cluster.address) as client:
        warm = [f for f in client.status().backbone.functions if f.state == "warm"]
    for f in sorted(warm, key=lambda f: (f.function, -f.replica)):
        name = f"{f.function}-{f.replica}"
        try:
            pid = int((cluster.run_dir / "functions" / f"{name}.pid").read_text())
            if b"remoe.functions.expert" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            continue
        return name
    return None


def wait_functions_warm(cluster: LocalCluster, timeout_s: float = 180.0) -> None:
    """Every function instance serving (so the kill hits a replica in use); the Warm RPC starts them."""
    from remoe.proto import backbone_pb2, backbone_pb2_grpc
    from remoe.transport.channel import insecure_channel

    backbone = backbone_pb2_grpc.BackboneServiceStub(insecure_channel(cluster.by_name("backbone").address))
    backbone.Warm(backbone_pb2.WarmRequest(), timeout=30)
    deadline = time.monotonic() + timeout_s
    with Client(cluster.address) as client:
        while not all(f.state == "warm" for f in client.status().backbone.functions):
            if time.monotonic() > deadline:
                raise SystemExit(f"functions did not start in {timeout_s:.0f} s; logs in {cluster.run_dir}")
            time.sleep(0.2)


def backbone_busy_s(cluster: LocalCluster) -> float:
    with Client(cluster.address) as client:
        return client.status().backbone.batch.busy_s


def run_level(
    cluster: LocalCluster, batching: str, clients: int, requests: int, pairs, new_tokens: int, kill: bool
) -> Level:
    wait_functions_warm(cluster)
    level = Level(batching, clients, requests, 0.0)
    busy_before = backbone_busy_s(cluster)
    sdk = [Client(cluster.address) for _ in range(clients)]
    done = threading.Semaphore(0)

    def work(i: int) -> Outcome:
        ids, expected = pairs[i % len(pairs)]
        outcome = one_request(sdk[i % clients], f"load-{batching}-c{clients}-{i}", ids, expected, new_tokens)
        done.release()
        return outcome

    def killer() -> None:
        for _ in range(requests // 2):
            done.acquire()
        victim = kill_a_function_replica(cluster)
        if victim:
            level.killed.append(victim)
            log(f"  killed function replica {victim}")

    thread = threading.Thread(target=killer, daemon=True) if kill else None
    start = time.monotonic()
    if thread:
        thread.start()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        level.outcomes = list(pool.map(work, range(requests)))
    level.wall_s = time.monotonic() - start
    level.busy_s = backbone_busy_s(cluster) - busy_before
    if thread:
        thread.join(5)
    for client in sdk:
        client.close()
    return level


def count_metering(cluster: LocalCluster, levels: list[Level]) -> None:
    time.sleep(1.0)  # the gateway meters after the last chunk
    records = Ledger(cluster.redis_url).read()
    seen = Counter(r.request_id for r in records)
    for level in levels:
        mine = [o for o in level.outcomes if o.ok or o.wrong_tokens]  # answered requests
        prefix = f"load-{level.batching}-c{level.clients}-"
        level.metered = sum(n for rid, n in seen.items() if rid.startswith(prefix))
        level.lost = sum(1 for o in mine if seen[o.request_id] == 0)
        level.doubled = sum(1 for rid, n in seen.items() if rid.startswith(prefix) and n > 1)
        billed = [r for r in records if r.request_id.startswith(prefix)]
        if billed:
            level.cost_per_request = float(np.mean([r.cost for r in billed]))
            level.main_s_per_request = float(np.mean([r.main_s for r in billed]))
            level.mean_step_requests = float(np.mean([r.mean_step_requests for r in billed]))
            level.billed_main_s = float(sum(r.main_s for r in billed))


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = results["levels"]
    lines = [
        "# Load: concurrent clients through `remoe up` with functions, every answer checked",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}. Commit: {results['commit']}.",
        "",
        f"Model: seeded random OLMoE-shaped checkpoint ({MODEL_SPEC.layers} layers x {MODEL_SPEC.experts} experts, "
        f"top-{MODEL_SPEC.top_k}); `remoe up` with 2 expert services and half of every layer's experts in "
        f"functions (the other half of layer 1's in two replicas), predictor and metering ledger on redis-server. "
        f"{results['new_tokens']} new tokens per request, {PROMPTS} distinct prompts of 8-48 tokens, each answer "
        "compared with transformers' greedy tokens. Gateway admission limit "
        f"{results['max_requests']} requests at once: beyond it a request is refused with a retry hint and the "
        "client retries after it. "
        + ("One function replica SIGKILLed halfway through every level. " if results["kill_function"] else "")
        + "Batching on: the backbone's continuous batching (the default); off: REMOE_BACKBONE_BATCHING=off, each "
        "request its own forward per token. Both in this one run, one cluster each, levels in the order listed.",
        "",
        "Ratios (x) are against the same mode's 1-client level of this run. Cost per request: the mean of the "
        "level's ledger records (backbone memory x its billed seconds + functions' memory x billed seconds; "
        "with batching a forward's time is split over the requests in it by tokens). Busy: the backbone's seconds "
        "in forwards during the level (its Status); billed: the level's records' backbone seconds summed.",
        "",
        "| batching | clients | requests | answered right | wrong tokens | errors | refused, retried | req/s | "
        "tokens/s | tokens/s (x) | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | TPOT p50 (x) | cost/request | "
        "cost (x) | requests per forward | busy / billed (s) | killed | metered | lost records | doubled records |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["batching"]: r for r in rows if r["clients"] == 1}
    for r in rows:
        b = base.get(r["batching"], {})
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        busy = f"{r['busy_s']:.1f} / {r['billed_main_s']:.1f}" if r["batching"] == "on" else "-"
        lines.append(
            f"| {r['batching']} | {r['clients']} | {r['requests']} | {r['ok']} | {r['wrong_tokens']} | {errors} | "
            f"{r['refusals_retried']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{_ratio(r['tokens_per_s'], b.get('tokens_per_s', 0))} | "
            f"{r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | {r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f} | "
            f"{_ratio(r['tpot_p50_ms'], b.get('tpot_p50_ms', 0))} | {r['cost_per_request']:.3g} | "
            f"{_ratio(r['cost_per_request'], b.get('cost_per_request', 0))} | {r['mean_step_requests']:.1f} | "
            f"{busy} | {', '.join(r['killed']) or '-'} | {r['metered']} | {r['lost_records']} | "
            f"{r['doubled_records']} |"
        )
    lines += ["", "![load](load.png)", ""]
    (out / "load.md").write_text("\n".join(lines))
    plot(rows, out / "load.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8.8, 3.4))
    for mode, color in (("on", "#d62"), ("off", "#888")):
        mine = [r for r in rows if r["batching"] == mode]
        if not mine:
            continue
        clients = [r["clients"] for r in mine]
        a.plot(clients, [r["tokens_per_s"] for r in mine], "o-", color=color, label=f"batching {mode}")
        b.plot(clients, [r["ttft_p50_ms"] for r in mine], "o-", label=f"TTFT p50, batching {mode}", color=color)
        b.plot(clients, [r["tpot_p50_ms"] for r in mine], "s--", label=f"TPOT p50, batching {mode}", color=color)
    a.set(xscale="log", xlabel="concurrent clients", ylabel="tokens/s", title="throughput")
    a.legend(fontsize=7)
    b.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms", title="latency (p50)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrency levels")
    parser.add_argument(
        "--requests",
        type=int,
        default=0,
        help="requests per level (0: 12 per client, at least 48: a level long enough that its ramp-up and tail, "
        "when fewer requests share the steps, weigh little)",
    )
    parser.add_argument(
        "--batching", choices=["both", "on", "off"], default="both", help="backbone continuous batching"
    )
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument("--max-requests", type=int, default=64, help="the gateway's admission limit")
    parser.add_argument("--no-kill", dest="kill", action="store_false", help="kill no function replica")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.requests < 0 or args.new_tokens < 1 or args.max_requests < 1:
        parser.error("--clients, --new-tokens and --max-requests must be >= 1, --requests >= 0")

    from bench.evaluation.__main__ import commit

    model = model_dir()
    log(f"reference tokens for {PROMPTS} prompts (transformers)")
    pairs = prompts_and_references(model, args.new_tokens)
    levels = []
    for batching in ["on", "off"] if args.batching == "both" else [args.batching]:
        env = {"REMOE_GATEWAY_MAX_REQUESTS": str(args.max_requests), "REMOE_BACKBONE_BATCHING": batching}
        cluster = LocalCluster(model, port=0, remote_ratio=0.5, function_ttl_s=120.0, env=env)
        with cluster:
            if cluster.redis_url is None:
                raise SystemExit("the metering check needs redis-server (apt-get install redis-server)")
            log(f"batching {batching}: remoe up on {cluster.address}; logs in {cluster.run_dir}")
            mine = []
            for clients in args.clients:
                requests = args.requests or max(48, 12 * clients)
                log(f"{clients} client(s), {requests} requests, batching {batching}")
                mine.append(run_level(cluster, batching, clients, requests, pairs, args.new_tokens, args.kill))
                done = {k: v for k, v in mine[-1].summary().items() if k in SHOWN_WHILE_RUNNING}
                log(f"  {json.dumps(done)}")  # the ledger is counted once every level is done
            count_metering(cluster, mine)
            levels += mine
    results = {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
        "new_tokens": args.new_tokens,
        "max_requests": args.max_requests,
        "kill_function": args.kill,
        "levels": [level.summary() for level in levels],
        "outcomes": {f"{level.batching}-{level.clients}": [asdict(o) for o in level.outcomes] for level in levels},
    }
    write_report(results, args.out)
    log(f"wrote {args.out / 'load.md'}")
    bad = [r for r in results["levels"] if r["wrong_tokens"] or r["lost_records"] or r["doubled_records"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
