"""The HTTP API's cost: the same requests through the gRPC SDK and through the official `openai` client.

One LocalCluster (one expert service, no predictor: what is measured is the front end) serves both. For each
concurrency level, rounds alternate the three ways of asking (SDK stream, HTTP stream, HTTP whole answer) so
that the machine's noise falls on all of them alike; every answer's text is checked against the SDK's greedy
text for its prompt. Reported per way, measured at the client: TTFT and TPOT p50/p99 (TPOT: (last token -
first text) / (tokens - 1), tokens from the answer's usage), whole-request latency, and the
ratio of each HTTP way to the SDK measured in the same run.

    python -m bench.http_api [--clients 1 8] [--rounds 6] [--new-tokens 32] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import openai

from remoe.cluster import LocalCluster
from remoe.machine import machine_description
from remoe.model.tiny import TinySpec, make_tiny_model
from remoe.sdk import Client

ROOT = Path(__file__).resolve().parent.parent
MODEL_SPEC = TinySpec("qwen3_moe", layers=3, experts=8, top_k=2, seed=0)
PROMPTS = [
    "The quick brown fox explains how a hash table works",
    "Write a short poem about the sea",
    "SELECT name, price FROM products WHERE",
    "The committee will meet on Monday to",
    "Recipes: whisk two eggs with milk and",
    "History remembers the printing press because",
    "What is the capital of France? It is",
    "In 1969 the first people walked on",
]
WAYS = ("grpc-sdk-stream", "http-stream", "http-whole")


@dataclass
class Sample:
    way: str
    clients: int
    ttft_s: float  # first token (whole answer: the answer)
    tpot_s: float | None
    total_s: float
    tokens: int
    right: bool


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ask(way: str, prompt: str, new_tokens: int, sdk: Client, oai: openai.OpenAI, model: str) -> tuple:
    """(text, tokens, ttft_s, total_s) of one greedy request."""
    start = time.perf_counter()
    first = None
    if way == "grpc-sdk-stream":
        text, tokens = [], 0
        for chunk in sdk.stream(prompt=prompt, max_new_tokens=new_tokens):
            if chunk.text:  # the first text, as over HTTP (a token that completes no character sends no event)
                first = first or time.perf_counter()
            text.append(chunk.text)
            tokens += len(chunk.token_ids)
        return "".join(text), tokens, first - start, time.perf_counter() - start
    if way == "http-stream":
        text, tokens = [], 0
        stream = oai.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=new_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                first = first or time.perf_counter()
                text.append(chunk.choices[0].text)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return "".join(text), tokens, first - start, time.perf_counter() - start
    answer = oai.completions.create(model=model, prompt=prompt, max_tokens=new_tokens, temperature=0)
    total = time.perf_counter() - start
    return answer.choices[0].text, answer.usage.completion_tokens, total, total


def run_level(cluster, model: str, clients: int, rounds: int, new_tokens: int, expected: dict) -> list[Sample]:
    sdks = [Client(cluster.address, timeout=120) for _ in range(clients)]
    oais = [openai.OpenAI(base_url=cluster.http_url, api_key="unused", max_retries=0) for _ in range(clients)]
    samples: list[Sample] = []
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for r in range(rounds):
            for w in range(len(WAYS)):
                way = WAYS[(w + r) % len(WAYS)]  # rotate the order each round

                def one(i: int, way: str = way, r: int = r) -> Sample:
                    prompt = PROMPTS[(r * clients + i) % len(PROMPTS)]
                    text, tokens, ttft, total = ask(way, prompt, new_tokens, sdks[i], oais[i], model)
                    tpot = (total - ttft) / (tokens - 1) if way != "http-whole" and tokens > 1 else None
                    return Sample(way, clients, ttft, tpot, total, tokens, text == expected[prompt])

                samples += list(pool.map(one, range(clients)))
    for sdk in sdks:
        sdk.close()
    return samples


def summarize(samples: list[Sample], clients: int) -> list[dict]:
    rows = []
    for way in WAYS:
        mine = [s for s in samples if s.way == way and s.clients == clients]
        ttft = np.array([s.ttft_s for s in mine]) * 1e3
        tpot = np.array([s.tpot_s for s in mine if s.tpot_s is not None]) * 1e3
        total = np.array([s.total_s for s in mine]) * 1e3
        rows.append(
            {
                "way": way,
                "clients": clients,
                "requests": len(mine),
                "right": sum(s.right for s in mine),
                "ttft_p50_ms": float(np.percentile(ttft, 50)),
                "ttft_p99_ms": float(np.percentile(ttft, 99)),
                "tpot_p50_ms": float(np.percentile(tpot, 50)) if tpot.size else None,
                "tpot_p99_ms": float(np.percentile(tpot, 99)) if tpot.size else None,
                "total_p50_ms": float(np.percentile(total, 50)),
                "tokens": int(sum(s.tokens for s in mine)),
            }
        )
    base = rows[0]
    for row in rows:
        row["total_vs_sdk"] = row["total_p50_ms"] / base["total_p50_ms"]
        row["ttft_vs_sdk"] = row["ttft_p50_ms"] / base["ttft_p50_ms"]
    return rows


def write_report(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "http_api.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# The HTTP API's cost: the official openai client vs the gRPC SDK, same cluster, same run",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}. Commit: {results['commit']}.",
        "",
        f"Model: seeded random Qwen3-MoE-shaped checkpoint ({MODEL_SPEC.layers} layers x {MODEL_SPEC.experts} "
        f"experts, top-{MODEL_SPEC.top_k}); `remoe up`'s processes with one expert service, no predictor. "
        f"{results['new_tokens']} greedy tokens per request (fewer when the model ends the text), "
        f"{len(PROMPTS)} prompts; each level's rounds rotate the three ways so noise falls on all alike; every "
        "answer compared with the SDK's text for its prompt. Times at the client; TTFT is the first text (a "
        "token that completes no character yet shows nothing), of a whole answer the answer's latency. Ratios: "
        "to the SDK's p50 at the same level.",
        "",
        "| clients | way | requests | same text as the SDK | TTFT p50 / p99 (ms) | TPOT p50 / p99 (ms) | "
        "request p50 (ms) | request vs SDK | TTFT vs SDK |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        tpot = f"{r['tpot_p50_ms']:.1f} / {r['tpot_p99_ms']:.1f}" if r["tpot_p50_ms"] is not None else "-"
        lines.append(
            f"| {r['clients']} | {r['way']} | {r['requests']} | {r['right']} | {r['ttft_p50_ms']:.1f} / "
            f"{r['ttft_p99_ms']:.1f} | {tpot} | {r['total_p50_ms']:.0f} | {r['total_vs_sdk']:.2f}x | "
            f"{r['ttft_vs_sdk']:.2f}x |"
        )
    lines += ["", "![http_api](http_api.png)", ""]
    (out / "http_api.md").write_text("\n".join(lines))
    plot(results["rows"], out / "http_api.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(8.8, 3.4))
    width = 0.8 / len(WAYS)
    colors = {"grpc-sdk-stream": "#48c", "http-stream": "#d62", "http-whole": "#999"}
    for k, way in enumerate(WAYS):
        mine = [next(r for r in rows if r["way"] == way and r["clients"] == c) for c in levels]
        x = np.arange(len(levels)) + k * width
        axes[0].bar(x, [r["ttft_p50_ms"] for r in mine], width, label=way, color=colors[way])
        axes[1].bar(x, [r["total_p50_ms"] for r in mine], width, label=way, color=colors[way])
    for ax, title in zip(axes, ("TTFT p50 (whole answer: its latency)", "request latency p50"), strict=True):
        ax.set_xticks(np.arange(len(levels)) + width, [f"{c} client(s)" for c in levels])
        ax.set(ylabel="ms", title=title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_api", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="concurrency levels (default 1 8)")
    p.add_argument("--rounds", type=int, default=6, help="rounds per level; each round asks every way (default 6)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per request (default 32)")
    p.add_argument("--out", type=Path, default=ROOT / "docs/results", help="where http_api.md/.json/.png go")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="remoe-http-bench-") as tmp:
        model_dir = make_tiny_model(MODEL_SPEC, Path(tmp) / "qwen3-moe")
        model = model_dir.name
        with LocalCluster(model_dir, port=0, expert_services=1, predictor=False, run_dir=Path(tmp) / "run") as cluster:
            log(f"cluster up: gRPC {cluster.address}, HTTP {cluster.http_url}")
            with Client(cluster.address, timeout=120) as sdk:
                expected = {q: sdk.generate(prompt=q, max_new_tokens=args.new_tokens).text for q in PROMPTS}
            samples: list[Sample] = []
            rows: list[dict] = []
            for clients in args.clients:
                log(f"{clients} client(s): {args.rounds} rounds x {len(WAYS)} ways")
                samples += run_level(cluster, model, clients, args.rounds, args.new_tokens, expected)
                rows += summarize(samples, clients)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    results = {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit.stdout.strip() or "unknown",
        "new_tokens": args.new_tokens,
        "rows": rows,
        "samples": [asdict(s) for s in samples],
    }
    write_report(results, args.out)
    for r in rows:
        log(
            f"  {r['clients']:>2} {r['way']:<16} right {r['right']}/{r['requests']}  TTFT p50 {r['ttft_p50_ms']:.1f} "
            f"ms  request p50 {r['total_p50_ms']:.0f} ms ({r['total_vs_sdk']:.2f}x SDK)"
        )
    log(f"wrote {args.out / 'http_api.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
