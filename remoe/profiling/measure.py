"""Each speed the cost model needs, measured on its own: expert compute, transfer, functions, the backbone."""

from __future__ import annotations

import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

MEMORY_SIZES_GB = (1.0, 2.0, 3.0, 4.0)
PROMPT_LENGTHS = (16, 64, 128, 256)
EXPERT_TOKENS = (1, 4, 16, 64, 128)


def _median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def line_fit(xs, ys) -> tuple[float, float]:
    """(intercept, slope) of a least-squares line."""
    slope, intercept = np.polyfit(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64), 1)
    return float(intercept), float(slope)


def measure_experts(model_dir: Path, repeats: int) -> dict:
    """Seconds for one expert over token counts, at 1..cores threads: {threads: [[tokens, s], ...]}."""
    from remoe.checkpoint.dtypes import resolve_dtype
    from remoe.checkpoint.weights import open_weights
    from remoe.experts.executor import LocalExpertExecutor

    weights = open_weights(model_dir)
    dtype = resolve_dtype(weights.config, "auto")
    executor = LocalExpertExecutor(weights, dtype=dtype)
    layer = weights.arch.layer_indices[0]
    executor.preload(layer, 0)
    before = torch.get_num_threads()
    curves = {}
    try:
        for threads in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(threads)
            points = []
            for n in EXPERT_TOKENS:
                hidden = torch.randn(n, weights.arch.hidden_size, dtype=dtype)
                index, gate = torch.zeros(n, 1, dtype=torch.int64), torch.ones(n, 1, dtype=dtype)
                run = lambda h=hidden, i=index, g=gate: executor.compute(layer, h, i, g)  # noqa: E731
                run()  # warm
                points.append([n, _median_time(run, repeats)])
            curves[threads] = points
    finally:
        torch.set_num_threads(before)
    return curves


def measure_bandwidth(megabytes: int = 32) -> float:
    """Bytes per second through the tensor codec (encode + decode) and a loopback TCP socket."""
    from remoe.transport import tensor_codec

    tensor = torch.randn(megabytes * 2**20 // 4)
    nbytes = tensor.numel() * 4
    codec_s = _median_time(lambda: tensor_codec.decode(tensor_codec.encode(tensor)), 3)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    payload = bytes(nbytes)

    def drain():
        conn, _ = server.accept()
        with conn:
            left = nbytes
            while left:
                left -= len(conn.recv(min(left, 2**20)))
            conn.sendall(b"k")

    reader = threading.Thread(target=drain)
    reader.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        start = time.perf_counter()
        client.sendall(payload)
        client.recv(1)
        socket_s = time.perf_counter() - start
    reader.join()
    server.close()
    return nbytes / (codec_s + socket_s)


def measure_functions(
    model_dir: Path, run_dir: Path, big_batch: int, repeats: int, progress, sizes_gb=MEMORY_SIZES_GB
) -> dict:
    """Per memory size: cold start (first answer) and warm round trips of a 1-token and a big batch."""
    from remoe.checkpoint.dtypes import resolve_dtype
    from remoe.checkpoint.weights import open_weights
    from remoe.platform.base import FunctionSpec
    from remoe.platform.local import LocalFunctionPlatform
    from remoe.proto import expert_pb2
    from remoe.transport import tensor_codec
    from remoe.transport.expert_stream import ExpertStream

    weights = open_weights(model_dir)
    dtype = resolve_dtype(weights.config, "auto")
    layer, hidden_size = weights.arch.layer_indices[0], weights.arch.hidden_size
    specs = [FunctionSpec(f"profile-{int(y * 1024)}", ((layer, 0),), int(y * 1024)) for y in sizes_gb]
    platform = LocalFunctionPlatform(model_dir, run_dir, idle_ttl_s=600)
    platform.deploy(specs)
    platform.wait_runtime()  # the runtime template starts once per backbone: not part of each function's cold start

    def batch(n: int) -> expert_pb2.ExpertBatch:
        return expert_pb2.ExpertBatch(
            layer=layer,
            hidden_states=tensor_codec.encode(torch.randn(n, hidden_size, dtype=dtype)),
            top_k_index=tensor_codec.encode(torch.zeros(n, 1, dtype=torch.int64)),
            top_k_weights=tensor_codec.encode(torch.ones(n, 1, dtype=dtype)),
        )

    results = {}
    try:
        for y, spec in zip(sizes_gb, specs, strict=True):
            start = time.perf_counter()
            (address,) = platform.endpoints(spec.name, timeout_s=180)
            stream = ExpertStream(address)
            small, big = batch(1), batch(big_batch)

            def call(b, stream=stream, name=spec.name):
                result = stream.submit(b)[1].result(timeout=120)
                if result.status_code:
                    raise RuntimeError(f"function {name}: {result.error}")

            call(small)
            cold = time.perf_counter() - start
            call(big)  # warm both sizes
            results[y] = {
                "cold_start_s": cold,
                "rtt_1_s": _median_time(lambda b=small: call(b), repeats),
                f"rtt_{big_batch}_s": _median_time(lambda b=big: call(b), repeats),
                "threads": min(os.cpu_count() or 1, max(1, int(y))),
            }
            stream.close()
            progress(f"function {y:g} GB")
    finally:
        platform.close()
    return results


def measure_end_to_end(
    model_dir: Path,
    run_dir: Path,
    new_tokens: int,
    repeats: int,
    progress,
    remote: int = 0,
    replicas: int = 1,
    memory_mb: int = 1024,
    expert_services: int | None = None,
    min_decode_s: float = 0.0,
) -> dict:
    """TTFT per prompt length and TPOT through `remoe up`, as the SDK client sees them: every expert on the
    expert services, or the last `remote` experts of every layer in functions, split over `replicas` functions
    per layer; `expert_services=0`: every expert in the backbone process (the one-device system)."""
    from remoe.checkpoint.weights import open_weights
    from remoe.cluster import LocalCluster
    from remoe.platform.base import FunctionSpec, functions_to_json
    from remoe.sdk import Client

    run_dir.mkdir(parents=True, exist_ok=True)
    plan_file = None
    if remote:
        arch = open_weights(model_dir).arch
        experts = range(arch.num_experts - remote, arch.num_experts)
        shares = [list(experts)[j::replicas] for j in range(replicas)]
        specs = [
            FunctionSpec(f"layer-{layer}-{j}", tuple((layer, e) for e in share), memory_mb)
            for layer in arch.layer_indices
            for j, share in enumerate(shares)
        ]
        plan_file = run_dir / "plan.json"
        plan_file.write_text(json.dumps(functions_to_json(specs)))
    services = {} if expert_services is None else {"expert_services": expert_services}
    where = "in the backbone" if expert_services == 0 else f"{replicas if remote else 0} function(s)"
    with LocalCluster(model_dir, port=0, predictor=False, run_dir=run_dir, plan_file=plan_file, **services) as cluster:
        with Client(cluster.address) as client:

            def generate(ids: list[int], tokens: int) -> tuple[float, float]:
                out = client.generate(token_ids=ids, max_new_tokens=tokens, ignore_eos=True)
                # At the client, as the evaluation and the SLO time a request (the gateway and stream included).
                return out.client_ttft_s, out.client_tpot_s

            label = f"end to end, {where} per layer"
            return latency_rows(generate, new_tokens, repeats, progress, label, min_decode_s)


def measure_in_process(model_dir: Path, new_tokens: int, repeats: int, progress, min_decode_s: float = 0.0) -> dict:
    """TTFT per prompt length and TPOT of the whole model in this process (LocalEngine, the CPU system)."""
    from remoe.model.engine import LocalEngine

    with LocalEngine(model_dir) as engine:  # closed: its experts must not stay held in the caller's process

        def generate(ids: list[int], tokens: int) -> tuple[float, float]:
            out = engine.generate(token_ids=ids, max_new_tokens=tokens, stop_on_eos=False)
            return out.ttft_s, out.tpot_s

        return latency_rows(generate, new_tokens, repeats, progress, "in process", min_decode_s)


def prompt_ids(n: int) -> list[int]:
    """The profile's prompt of `n` tokens (seeded by its length: the same prompt every run)."""
    return [int(i) for i in np.random.default_rng(n).integers(3, 200, size=n)]


def latency_rows(generate, new_tokens: int, repeats: int, progress, label: str, min_decode_s: float = 0.0) -> dict:
    """{prompt length: mean TTFT and TPOT, and the requests they are the mean of} of generate(ids, tokens) ->
    (ttft_s, tpot_s) over PROMPT_LENGTHS, after two warm-up requests (every code path run, every function started,
    very likely every expert loaded).

    Rounds visit every length in turn, so a slow spell of a shared machine lands on all of them rather than bending
    the line through them, and go on past `repeats` until `min_decode_s` of decode steps were timed: one second of
    decode on a shared 2-core machine was off the mean by 11-13% RMS (docs/results/profile_sampling.md). The mean,
    not the median: what a request is billed for is the sum of its seconds, slow steps included."""
    warm = [int(i) for i in np.random.default_rng(0).integers(3, 200, size=256)]
    for _ in range(2):
        generate(warm, 4)
    prompts = {n: prompt_ids(n) for n in PROMPT_LENGTHS}
    times: dict[int, list[tuple[float, float]]] = {n: [] for n in PROMPT_LENGTHS}
    decode_s, rounds = 0.0, 0
    while rounds < repeats or decode_s < min_decode_s:
        for n, ids in prompts.items():
            ttft, tpot = generate(ids, new_tokens)
            times[n].append((ttft, tpot))
            decode_s += tpot * max(new_tokens - 1, 0)
            if rounds == 0:
                progress(f"{label}, {n} prompt tokens")
        rounds += 1
    return {
        n: {
            "ttft_s": statistics.mean(t for t, _ in rows),
            "tpot_s": statistics.mean(t for _, t in rows),
            "requests": len(rows),
        }
        for n, rows in times.items()
    }
