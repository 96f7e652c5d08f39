"""The added cost of Remoe's distributed path, measured in one run on this machine.

1. Per MoE layer per decode step (1 token, top-k experts): the fan-out to two expert-service processes vs the
   in-process LocalExpertExecutor, same routing, same experts, through each transport side by side (gRPC
   streams, and the co-located data plane: the same messages over a unix socket), interleaved step by step.
2. TTFT / TPOT of `remoe up` (through the SDK; the backbone on each transport) vs LocalEngine vs transformers'
   generate.

Usage: python bench/dispatch.py [--steps N] [--new-tokens N] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import MODELS, PROMPT, machine_description  # noqa: E402

from remoe.checkpoint.weights import open_weights  # noqa: E402
from remoe.cluster import LocalCluster  # noqa: E402
from remoe.dispatch.executor import DispatchingExecutor  # noqa: E402
from remoe.experts.executor import LocalExpertExecutor  # noqa: E402
from remoe.experts.placement import Placement, Shard  # noqa: E402
from remoe.experts.servicer import ExpertServicer  # noqa: E402
from remoe.model.engine import LocalEngine  # noqa: E402
from remoe.model.tiny import make_tiny_model  # noqa: E402
from remoe.proto import expert_pb2  # noqa: E402
from remoe.sdk import Client  # noqa: E402
from remoe.transport import tensor_codec  # noqa: E402

TRANSPORTS = {"local plane": True, "gRPC": False}  # name -> DispatchingExecutor(local_plane=...)


@dataclass
class LayerRow:
    model: str
    transport: str
    in_process_ms: float  # median per layer per decode step
    fanout_ms: float
    added_ms: float
    client_ms: float  # of the fan-out: routing rows, encoding, sending (median)
    waiting_ms: float  # until every answer was read and added
    server_ms: float  # the slowest expert service's own time on its batch


@dataclass
class WakeRow:
    model: str
    pause_ms: float  # idle time before each answer (0: back to back)
    answer_ms: float  # median: one service's batch answered by the servicer, in this process


@dataclass
class LatencyRow:
    model: str
    system: str
    ttft_ms: float
    tpot_ms: float


def bench_layer(name: str, path: Path, cluster: LocalCluster, steps: int) -> list[LayerRow]:
    weights = open_weights(path)
    arch = weights.arch
    experts = [s for s in cluster.services if s.name.startswith("expert-")]
    placement = Placement(
        {s.address: Shard(i, len(experts)).experts(arch.layer_indices, arch.num_experts) for i, s in enumerate(experts)}
    )
    remotes = {
        t: DispatchingExecutor(placement, arch.layer_indices, arch.num_experts, local_plane=plane)
        for t, plane in TRANSPORTS.items()
    }
    local = LocalExpertExecutor(weights)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, arch.hidden_size, generator=g)  # [1, H]: one decode token
    # Routing that touches both services, as most decode steps do with round-robin shards.
    index = torch.arange(arch.top_k).unsqueeze(0)  # [1, K]
    weights_k = torch.full((1, arch.top_k), 1.0 / arch.top_k)
    layer = arch.layer_indices[0]
    runs = {t: (lambda r=r: r.compute(layer, hidden, index, weights_k)) for t, r in remotes.items()}
    try:
        # In-process alone, as LocalEngine runs it (its threads warm between calls); the transports in turn.
        ms = _interleaved_median_ms({"in-process": lambda: local.compute(layer, hidden, index, weights_k)}, steps)
        ms |= _interleaved_median_ms(runs, steps)
        for t, r in remotes.items():
            want = "a unix socket" if TRANSPORTS[t] else "gRPC"
            used = {stream.plane_path is not None for stream in r.streams.values()}
            assert used == {TRANSPORTS[t]}, f"{t}: the streams did not all use {want}"
        splits = {t: list(r.fanout_split)[-steps:] for t, r in remotes.items()}
    finally:
        for r in remotes.values():
            r.close()

    def med(split, field: str) -> float:
        return round(statistics.median(getattr(s, field) for s in split) * 1e3, 3)

    return [
        LayerRow(
            name,
            t,
            round(ms["in-process"], 3),
            round(ms[t], 3),
            round(ms[t] - ms["in-process"], 3),
            med(splits[t], "client_s"),
            med(splits[t], "waiting_s"),
            med(splits[t], "server_s"),
        )
        for t in remotes
    ]


def bench_wake(name: str, path: Path, steps: int, pauses_ms=(0.0, 0.5, 2.0)) -> list[WakeRow]:
    """The servicer's answer to one service's decode batch, run here with one thread, back to back and after
    an idle pause: a service sleeps between a token's layers, and on a shared machine work after a sleep can
    run slower (caches and the vCPU go cold; how much depends on the neighbours' load at the time)."""
    weights = open_weights(path)
    arch = weights.arch
    servicer = ExpertServicer(LocalExpertExecutor(weights), "wake")
    g = torch.Generator().manual_seed(0)
    index = torch.full((1, arch.top_k), -1)
    index[0, 0] = 0  # one expert of the token's top-k, as each of two services gets
    batch = expert_pb2.ExpertBatch(
        layer=arch.layer_indices[0],
        hidden_states=tensor_codec.encode(torch.randn(1, arch.hidden_size, generator=g)),
        top_k_index=tensor_codec.encode(index),
        top_k_weights=tensor_codec.encode(torch.full((1, arch.top_k), 1.0 / arch.top_k)),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as LocalCluster runs each service on this machine
    rows = []
    try:
        for _ in range(20):
            servicer._answer(batch)
        for pause in pauses_ms:
            times = []
            for _ in range(steps):
                if pause:
                    time.sleep(pause / 1e3)
                start = time.perf_counter()
                servicer._answer(batch)
                times.append(time.perf_counter() - start)
            rows.append(WakeRow(name, pause, round(statistics.median(times) * 1e3, 3)))
    finally:
        torch.set_num_threads(threads)
    return rows


def _interleaved_median_ms(runs: dict, steps: int) -> dict[str, float]:
    """Each run once per step, in turn, so the machine's noise falls on all of them alike."""
    for _ in range(10):
        for fn in runs.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(steps):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            samples[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def _stream_latency(stream) -> tuple[float, float]:
    start = time.perf_counter()
    times = [time.perf_counter() for _ in stream]
    return (times[0] - start) * 1e3, (times[-1] - times[0]) / max(1, len(times) - 1) * 1e3


def bench_latency(
    name: str, path: Path, clusters: dict[str, LocalCluster], new_tokens: int, repeats: int, hf: bool = True
) -> list[LatencyRow]:
    """`clusters`: transport name -> a remoe up cluster whose backbone uses it. Systems run in rotation."""
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

    def hf_generate():
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

    def up(client: Client):
        return lambda: _stream_latency(client.stream(token_ids=ids, max_new_tokens=new_tokens, ignore_eos=True))

    def local(threads: int | None = None):
        def run():
            before = torch.get_num_threads()
            torch.set_num_threads(threads or before)
            try:
                return _stream_latency(engine.stream(token_ids=ids, max_new_tokens=new_tokens, stop_on_eos=False))
            finally:
                torch.set_num_threads(before)

        return run

    systems = {f"remoe up ({t}, 2 expert services)": up(Client(c.address)) for t, c in clusters.items()}
    systems |= {"LocalEngine": local(), "transformers generate": hf_generate}
    if not hf:
        del systems["transformers generate"]
    else:  # the same cores as remoe up's backbone gets, so the table separates core sharing from the fan-out
        threads = next(iter(clusters.values())).threads_per_service()
        systems[f"LocalEngine, {threads} thread(s) (as remoe up's backbone)"] = local(threads)
    for run in systems.values():
        run()  # warm-up
    samples: dict[str, list] = {system: [] for system in systems}
    for _ in range(repeats):
        for system, run in systems.items():
            samples[system].append(run())
    rows = []
    for system, got in samples.items():
        ttft = statistics.median(s[0] for s in got)
        tpot = statistics.median(s[1] for s in got)
        rows.append(LatencyRow(name, system, round(ttft, 2), round(tpot, 2)))
    return rows


def _tpot_ratios(rows: list[LatencyRow]) -> list[str]:
    lines = []
    for model in dict.fromkeys(r.model for r in rows):
        by = {r.system: r for r in rows if r.model == model}
        for transport in TRANSPORTS:
            up = by.get(f"remoe up ({transport}, 2 expert services)")
            local = by.get("LocalEngine" if transport == "local plane" else "LocalEngine (gRPC phase)")
            if up and local:
                lines.append(
                    f"- {model}: remoe up's TPOT over {transport} is {up.tpot_ms / local.tpot_ms:.2f}x LocalEngine's."
                )
            same_cores = next((r for s, r in by.items() if "(as remoe up's backbone)" in s), None)
            if up and same_cores and transport == "local plane":
                lines.append(
                    f"- {model}: over {transport}, {up.tpot_ms / same_cores.tpot_ms:.2f}x the TPOT of LocalEngine run "
                    "with as many threads as remoe up's backbone has."
                )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed fan-outs per model")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()

    layer_rows, latency_rows, wake_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in MODELS.items():
            path = make_tiny_model(spec, Path(tmp) / name)
            wake_rows += bench_wake(name, path, args.steps)
            # One cluster at a time (two at once slow everything on 2 cores); each phase rotates its remoe up
            # with LocalEngine, and each transport's TPOT ratio is against its own phase's LocalEngine.
            with LocalCluster(path, port=0, env={"REMOE_BACKBONE_EXPERT_TRANSPORT": "auto"}) as cluster:
                layer_rows += bench_layer(name, path, cluster, args.steps)
                latency_rows += bench_latency(name, path, {"local plane": cluster}, args.new_tokens, args.repeats)
            grpc_env = {"REMOE_BACKBONE_EXPERT_TRANSPORT": "grpc"}
            with LocalCluster(path, port=0, env=grpc_env) as cluster:
                rows = bench_latency(name, path, {"gRPC": cluster}, args.new_tokens, args.repeats, hf=False)
                latency_rows += [
                    replace(r, system=f"{r.system} (gRPC phase)") if r.system == "LocalEngine" else r for r in rows
                ]

    machine = machine_description()
    lines = [
        "# The distributed path's added cost (batch 1, float32, CPU, loopback)",
        "",
        f"Machine: {machine}. All numbers from one run; medians. Expert services and backbone run as separate",
        "processes sharing the machine's cores (LocalCluster gives each one OpenMP thread on 2 cores).",
        "",
        "## One MoE layer, one decode token (top-k experts split over two expert services)",
        "",
        "The in-process executor runs alone (threads warm, as in LocalEngine), then both transports in turn,",
        "step by step; `local plane` is the same",
        "ExpertBatch/ExpertResult messages over the unix socket each service advertises, `gRPC` its Compute stream.",
        "",
        "| model | transport | in-process executor (ms) | fan-out (ms) | added per layer (ms) |",
        "|---|---|---|---|---|",
        *[f"| {r.model} | {r.transport} | {r.in_process_ms} | {r.fanout_ms} | {r.added_ms} |" for r in layer_rows],
        "",
        "Where the fan-out's time goes (medians of the same steps, ms): the backbone's own work before the last",
        "batch is sent (routing rows to destinations, encoding), then waiting until every answer is read; of",
        "the waiting, the slowest service's own time on its batch (decode, compute, encode), the rest being",
        "the transport: for gRPC, the hand-offs between threads inside grpcio on both ends. The first service",
        "can compute while the backbone still builds the second batch (on 2 cores a send often hands the core",
        "to the woken service at once), so server work overlaps client work and the last column floors at 0.",
        "",
        "| model | transport | client work | waiting | of it, server work | of it, wire and hand-offs |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r.model} | {r.transport} | {r.client_ms} | {r.waiting_ms} | {r.server_ms} | "
            f"{max(0.0, round(r.waiting_ms - r.server_ms, 3))} |"
            for r in layer_rows
        ],
        "",
        "Part of why a service's work on a batch can take longer than the same work in the backbone: the",
        "servicer's own answer to one service's batch (decode, compute, encode), run in this process with one",
        "thread, back to back and after an idle pause as a service has between a token's layers (ms, medians;",
        "on a shared machine the gap depends on the neighbours' load at the time):",
        "",
        "| model | idle before each answer (ms) | answer (ms) |",
        "|---|---|---|",
        *[f"| {r.model} | {r.pause_ms} | {r.answer_ms} |" for r in wake_rows],
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
                "wake": [asdict(r) for r in wake_rows],
                "latency": [asdict(r) for r in latency_rows],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
