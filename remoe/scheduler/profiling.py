"""`remoe profile`: measure the cost model's speeds on this machine for one model, through the real parts.

1. Expert compute vs tokens and threads, in process: the marginal seconds per token of one expert
   (t_loc is the slope at the expert services' thread count).
2. Transfer per byte: the tensor codec both ways plus a loopback socket (B).
3. Functions through the local platform, one per memory size (1 GiB buys one thread, up to the cores):
   cold start to the first answer, warm invocation overhead (t_rem, a one-token batch) and the remote
   seconds per token T(y) (the slope between a one-token and a large batch, less the transfer), fitted to
   T(y) = th1 exp(-th2 y) + th3.
4. The backbone end to end through `remoe up` with every expert on the expert services: TTFT at three
   prompt lengths and TPOT give the backbone's per-layer prefill (fixed + per token) and decode times,
   the expert compute and transfer subtracted.
Everything measured is kept in the report's samples; the fit's points are plotted.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from remoe.scheduler.problem import Profile

MEMORY_SIZES_GB = (1.0, 2.0, 3.0, 4.0)
PROMPT_LENGTHS = (16, 64, 128, 256)
EXPERT_TOKENS = (1, 4, 16, 64, 128)


@dataclass
class ProfileReport:
    model: str
    machine: str
    date: str
    profile: Profile
    samples: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "machine": self.machine,
            "date": self.date,
            "profile": {f.name: getattr(self.profile, f.name) for f in fields(Profile)},
            "samples": self.samples,
            "notes": self.notes,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def write_profile(profile: Profile, path: str | Path) -> None:
    """A profile file with just the speeds (what `load_profile` reads), e.g. one written by hand."""
    Path(path).write_text(json.dumps({"profile": {f.name: getattr(profile, f.name) for f in fields(Profile)}}) + "\n")


def load_profile(path: str | Path) -> Profile:
    """The Profile of a `remoe profile` JSON file; unknown keys are refused, missing ones keep defaults."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())["profile"]
    except FileNotFoundError:
        raise ValueError(f"profile {path} not found (make one with `remoe profile --model DIR --out {path}`)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"profile {path}: not a `remoe profile` JSON file ({e})") from None
    known = {f.name for f in fields(Profile)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"profile {path}: unknown fields {sorted(unknown)}")
    if "remote_fit" in raw:
        raw["remote_fit"] = tuple(raw["remote_fit"])
    return Profile(**raw)


def fit_remote(memory_gb: list[float], seconds: list[float]) -> tuple[float, float, float]:
    """Least-squares T(y) = th1 exp(-th2 y) + th3 with every parameter >= 0."""
    from scipy.optimize import OptimizeWarning, curve_fit

    y, t = np.asarray(memory_gb, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
    if len(y) < 3:
        raise ValueError("need at least 3 memory sizes to fit T(y)")
    floor = float(t.min())
    start = (max(float(t.max() - floor), 1e-9) * float(np.exp(y.min())), 1.0, max(floor, 0.0))

    def model(y, th1, th2, th3):
        return th1 * np.exp(-th2 * y) + th3

    try:
        with warnings.catch_warnings():  # 3-4 points for 3 parameters: no covariance, which is not used
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(model, y, t, p0=start, bounds=([0, 0, 0], [np.inf, 50.0, np.inf]), maxfev=20000)
    except RuntimeError:  # no convergence: a flat line at the mean is the honest fit
        return (0.0, 1.0, float(t.mean()))
    return tuple(float(p) for p in params)


def _median_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _slope(xs, ys) -> tuple[float, float]:
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
) -> dict:
    """TTFT per prompt length and TPOT through `remoe up`: every expert on the expert services, or the last
    `remote` experts of every layer in functions, split over `replicas` functions per layer."""
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
    rows = {}
    with LocalCluster(model_dir, port=0, predictor=False, run_dir=run_dir, plan_file=plan_file) as cluster:
        with Client(cluster.address) as client:
            warm = [int(i) for i in np.random.default_rng(0).integers(3, 200, size=256)]
            for _ in range(2):  # every code path, the functions started and (very likely) every expert loaded
                client.generate(token_ids=warm, max_new_tokens=4, ignore_eos=True)
            for n in PROMPT_LENGTHS:
                ids = [int(i) for i in np.random.default_rng(n).integers(3, 200, size=n)]
                runs = [
                    client.generate(token_ids=ids, max_new_tokens=new_tokens, ignore_eos=True) for _ in range(repeats)
                ]
                rows[n] = {
                    "ttft_s": statistics.median(r.usage.ttft_s for r in runs),
                    "tpot_s": statistics.median(r.usage.tpot_s for r in runs),
                }
                progress(f"end to end, {replicas if remote else 0} function(s) per layer, {n} prompt tokens")
    return rows


def profile_model(
    model_dir: str | Path,
    quick: bool = False,
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> ProfileReport:
    from tqdm.auto import tqdm

    from remoe.machine import machine_description
    from remoe.scheduler.shape import shape_of_model

    model_dir = Path(model_dir).resolve()
    shape = shape_of_model(model_dir)
    repeats = 5 if quick else 11
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="remoe-profile-"))
    steps = 3 + (3 if quick else len(MEMORY_SIZES_GB)) + 3 * len(PROMPT_LENGTHS)
    bar = tqdm(total=steps, disable=not progress, desc="profile")

    def step(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update()

    experts = measure_experts(model_dir, repeats)
    step("experts")
    bandwidth = measure_bandwidth(8 if quick else 32)
    step("transfer")
    big = 512  # tokens in the large batch: enough that compute, not overhead, sets the slope
    sizes = MEMORY_SIZES_GB[:3] if quick else MEMORY_SIZES_GB
    functions = measure_functions(model_dir, run_dir / "functions", big, repeats, step, sizes)
    # Expert services in `remoe up` share the cores: their thread count is LocalCluster's.
    service_threads = max(1, (os.cpu_count() or 1) // 3)
    _, t_loc = _slope(*zip(*experts[service_threads], strict=True))
    t_loc = max(t_loc, 1e-9)
    # A 1 GB function computes with one thread: its fixed cost per expert per batch is that line's intercept.
    expert_call = max(_slope(*zip(*experts[1], strict=True))[0], 0.0)
    d_over_b = 2 * shape.hidden_bytes_per_token / bandwidth
    ys = sorted(functions)
    remote = [max((functions[y][f"rtt_{big}_s"] - functions[y]["rtt_1_s"]) / (big - 1) - d_over_b, 1e-9) for y in ys]
    fit = fit_remote(ys, remote)
    rtt = statistics.median(functions[y]["rtt_1_s"] for y in ys)
    cold = functions[ys[0]]["cold_start_s"]
    new_tokens, e2e_repeats = (8 if quick else 16), max(2, repeats // 2)
    e2e = measure_end_to_end(model_dir, run_dir / "cluster", new_tokens, e2e_repeats, step)
    half = shape.experts // 2
    one = measure_end_to_end(model_dir, run_dir / "cluster-one", new_tokens, e2e_repeats, step, half)
    two = measure_end_to_end(model_dir, run_dir / "cluster-two", new_tokens, e2e_repeats, step, half, replicas=2)
    layers, k = shape.layers, shape.top_k
    swap = shape.hidden_bytes_per_token / bandwidth
    # All local: TTFT = L (a + n_in (b + 2 tau + k t_loc)), a and b from the line through the prompt lengths;
    # TPOT = L (decode + 2 tau + k t_loc). The fan-out to the expert services is part of a and decode.
    lengths = sorted(e2e)
    intercept, slope = _slope(lengths, [e2e[n]["ttft_s"] / layers for n in lengths])
    prefill_token = max(slope - 2 * swap - k * t_loc, 0.0)
    prefill_layer = max(intercept, 0.0)
    decode = max(statistics.median(e2e[n]["tpot_s"] for n in lengths) / layers - 2 * swap - k * t_loc, 0.0)
    # With z functions per layer the remote side is the slower one: TPOT / L = decode + 2 tau + z t_dispatch +
    # k' T(1) + 2 D / B + t_rem. One and two functions per layer give t_dispatch (serial, in the backbone) and
    # t_rem (in parallel) as the backbone sees them, contention for the cores included; the function's bare
    # round trip is kept in the samples.
    t_remote_1gb = fit[0] * np.exp(-fit[1]) + fit[2]

    def extra(rows: dict, z: int) -> float:
        per_layer = statistics.median(rows[n]["tpot_s"] for n in lengths) / layers
        return per_layer - decode - 2 * swap - min(k, half // z) * (t_remote_1gb + expert_call) - d_over_b

    x1, x2 = extra(one, 1), extra(two, 2)
    dispatch = min(max(x2 - x1, 0.0), max(x1, 0.0))
    invoke = max(x1 - dispatch, 0.0)
    step("fit")
    bar.close()
    profile = Profile(
        local_expert_s_per_token=t_loc,
        backbone_prefill_s_per_token=prefill_token,
        backbone_prefill_layer_s=prefill_layer,
        backbone_decode_s=decode,
        swap_s_per_token=swap,
        invoke_s=invoke,
        dispatch_s=dispatch,
        expert_call_s=expert_call,
        bandwidth_bytes_s=bandwidth,
        cold_start_s=cold,
        remote_fit=fit,
        cpu_backbone_prefill_s_per_token=prefill_token,
        cpu_backbone_decode_s=decode,
        gpu_expert_s_per_token=t_loc,
        device="cpu",
    )
    samples = {
        "shape": shape.as_dict(),
        "expert_seconds": {str(t): points for t, points in experts.items()},
        "expert_service_threads": service_threads,
        "functions": {str(y): v for y, v in functions.items()},
        "remote_s_per_token": dict(zip(map(str, ys), remote, strict=True)),
        "end_to_end": {str(n): v for n, v in e2e.items()},
        "end_to_end_one_function": {"remote_per_layer": half, **{str(n): v for n, v in one.items()}},
        "end_to_end_two_functions": {"remote_per_layer": half, **{str(n): v for n, v in two.items()}},
        "function_round_trip_s": rtt,
    }
    notes = [
        "backbone_* include the fan-out to the expert services (one gRPC round trip per layer) and Python "
        "overheads: the backbone ran on this machine's CPU",
        "cpu_backbone_* and gpu_expert_s_per_token equal the CPU measurements: there is no GPU here",
        f"functions: 1 GiB buys one thread, capped at {os.cpu_count()} cores, so T(y) is flat above that",
    ]
    return ProfileReport(
        shape.name,
        machine_description(),
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        profile,
        samples,
        notes,
    )


def plot_profile(report: ProfileReport, path: str | Path) -> None:
    """Two panels: expert seconds vs tokens per thread count, and T(y) with its fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for threads, points in report.samples["expert_seconds"].items():
        n, s = zip(*points, strict=True)
        left.plot(n, np.array(s) * 1e3, marker="o", label=f"{threads} thread(s)")
    left.set(xlabel="tokens", ylabel="ms", title="one expert, in process", xscale="log")
    left.legend()
    measured = report.samples["remote_s_per_token"]
    ys = np.array([float(y) for y in measured])
    right.plot(ys, np.array(list(measured.values())) * 1e6, "o", label="measured (function)")
    grid = np.linspace(min(ys.min(), 0.5), ys.max() + 1, 100)
    th1, th2, th3 = report.profile.remote_fit
    right.plot(grid, (th1 * np.exp(-th2 * grid) + th3) * 1e6, label=f"fit {th1:.2e} e^(-{th2:.2f} y) + {th3:.2e}")
    right.set(xlabel="function memory y (GB)", ylabel="µs per token per expert", title="T(y)")
    right.legend()
    fig.suptitle(f"{report.model} on {report.machine[:60]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
