"""The added cost of Remoe's distributed path, measured in one run on this machine.

1. Per MoE layer per decode step (1 token, top-k experts): the gRPC fan-out to two expert-service processes
   on loopback vs the in-process LocalExpertExecutor, same routing, same experts.
2. TTFT / TPOT of `remoe up` (through the SDK) vs LocalEngine vs transformers' generate.

Usage: python bench/dispatch.py [--steps N] [--new-tokens N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import MODELS, PROMPT, machine_description  # noqa: E402

from remoe.cluster import LocalCluster  # noqa: E402
from remoe.experts.dispatch import DispatchingExecutor  # noqa: E402
from remoe.experts.executor import LocalExpertExecutor  # noqa: E402
from remoe.experts.placement import Placement, Shard  # noqa: E402
from remoe.model.engine import LocalEngine  # noqa: E402
from remoe.model.tiny import make_tiny_model  # noqa: E402
from remoe.model.weights import open_weights  # noqa: E402
from remoe.sdk import Client  # noqa: E402


@dataclass
class LayerRow:
    model: str
    in_process_ms: float  # median per layer per decode step
    grpc_fanout_ms: float
    added_ms: float
    client_ms: float  # of the fan-out: routing rows, encoding, sending (median)
    waiting_ms: float  # until every answer was read and added
    server_ms: float  # the slowest expert service's own time on its batch


@dataclass
class LatencyRow:
    model: str
    system: str
    ttft_ms: float
    tpot_ms: float


def _median_ms(fn, steps: int) -> float:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def bench_layer(name: str, path: Path, cluster: LocalCluster, steps: int) -> LayerRow:
    weights = open_weights(path)
    arch = weights.arch
    experts = [s for s in cluster.services if s.name.startswith("expert-")]
    placement = Placement(
        {s.address: Shard(i, len(experts)).experts(arch.layer_indices, arch.num_experts) for i, s in enumerate(experts)}
    )
    remote = DispatchingExecutor(placement, arch.layer_indices, arch.num_experts)
    local = LocalExpertExecutor(weights)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, arch.hidden_size, generator=g)  # [1, H]: one decode token
    # Routing that touches both services, as most decode steps do with round-robin shards.
    index = torch.arange(arch.top_k).unsqueeze(0)  # [1, K]
    weights_k = torch.full((1, arch.top_k), 1.0 / arch.top_k)
    layer = arch.layer_indices[0]
    try:
        local_ms = _median_ms(lambda: local.compute(layer, hidden, index, weights_k), steps)
        remote_ms = _median_ms(lambda: remote.compute(layer, hidden, index, weights_k), steps)
        split = list(remote.fanout_split)[-steps:]
    finally:
        remote.close()

    def med(field: str) -> float:
        return round(statistics.median(getattr(s, field) for s in split) * 1e3, 3)

    return LayerRow(
        name,
        round(local_ms, 3),
        round(remote_ms, 3),
        round(remote_ms - local_ms, 3),
        med("client_s"),
        med("waiting_s"),
        med("server_s"),
    )


def _stream_latency(stream) -> tuple[float, float]:
    start = time.perf_counter()
    times = [time.perf_counter() for _ in stream]
    return (times[0] - start) * 1e3, (times[-1] - times[0]) / max(1, len(times) - 1) * 1e3


def bench_latency(name: str, path: Path, cluster: LocalCluster, new_tokens: int, repeats: int) -> list[LatencyRow]:
    client = Client(cluster.address)
    engine = LocalEngine(path, device="cpu")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = engine.encode(PROMPT)

    class Clock:  # transformers' streamer: put() receives the prompt, then each new token
        def __init__(self):
            self.times = []

        def put(self, _value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def hf():
        clock = Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            ref.generate(
                torch.tensor([ids]),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
            )
        tokens = clock.times[1:]
        return (tokens[0] - start) * 1e3, (tokens[-1] - tokens[0]) / max(1, len(tokens) - 1) * 1e3

    systems = {
        "remoe up (SDK, 2 expert services)": lambda: _stream_latency(
            client.stream(token_ids=ids, max_new_tokens=new_tokens, ignore_eos=True)
        ),
        "LocalEngine": lambda: _stream_latency(
            engine.stream(token_ids=ids, max_new_tokens=new_tokens, stop_on_eos=False)
        ),
        "transformers generate": hf,
    }
    rows = []
    for system, run in systems.items():
        run()  # warm-up
        samples = [run() for _ in range(repeats)]
        ttft = statistics.median(s[0] for s in samples)
        tpot = statistics.median(s[1] for s in samples)
        rows.append(LatencyRow(name, system, round(ttft, 2), round(tpot, 2)))
    return rows


def _tpot_ratios(rows: list[LatencyRow]) -> list[str]:
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        by = {r.system: r for r in rows if r.model == model}
        up, local = by.get("remoe up (SDK, 2 expert services)"), by.get("LocalEngine")
        if up and local:
            lines.append(f"- {model}: remoe up's TPOT is {up.tpot_ms / local.tpot_ms:.2f}x LocalEngine's.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed fan-outs per model")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()

    layer_rows, latency_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in MODELS.items():
            path = make_tiny_model(spec, Path(tmp) / name)
            with LocalCluster(path, port=0) as cluster:
                layer_rows.append(bench_layer(name, path, cluster, args.steps))
                latency_rows += bench_latency(name, path, cluster, args.new_tokens, args.repeats)

    machine = machine_description()
    lines = [
        "# The distributed path's added cost (batch 1, float32, CPU, loopback)",
        "",
        f"Machine: {machine}. All numbers from one run; medians. Expert services and backbone run as separate",
        "processes sharing the machine's cores (LocalCluster gives each one OpenMP thread on 2 cores).",
        "",
        "## One MoE layer, one decode token (top-k experts split over two expert services)",
        "",
        "| model | in-process executor (ms) | gRPC fan-out (ms) | added per layer (ms) |",
        "|---|---|---|---|",
        *[f"| {r.model} | {r.in_process_ms} | {r.grpc_fanout_ms} | {r.added_ms} |" for r in layer_rows],
        "",
        "Where the fan-out's time goes (medians of the same steps, ms): the backbone's own work before the last",
        "batch is sent (routing rows to destinations, encoding), then waiting until every answer is read; of",
        "the waiting, the slowest service's own time on its batch (decode, compute, encode), the rest being",
        "gRPC, loopback and the hand-offs between threads inside grpcio on both ends.",
        "",
        "| model | client work | waiting | of it, server work | of it, wire and hand-offs |",
        "|---|---|---|---|---|",
        *[
            f"| {r.model} | {r.client_ms} | {r.waiting_ms} | {r.server_ms} | {round(r.waiting_ms - r.server_ms, 3)} |"
            for r in layer_rows
        ],
        "",
        f"## TTFT / TPOT ({args.new_tokens} new tokens)",
        "",
        "| model | system | TTFT (ms) | TPOT (ms) |",
        "|---|---|---|---|",
        *[f"| {r.model} | {r.system} | {r.ttft_ms} | {r.tpot_ms} |" for r in latency_rows],
        "",
        *_tpot_ratios(latency_rows),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dispatch.md").write_text(table)
    (args.out / "dispatch.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "layer": [asdict(r) for r in layer_rows],
                "latency": [asdict(r) for r in latency_rows],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
