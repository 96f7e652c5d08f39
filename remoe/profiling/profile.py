"""`remoe profile`: measure the cost model's speeds on this machine for one model, through the real parts.

1. Expert compute vs tokens and threads, in process: the marginal seconds per token of one expert
   (t_loc is the slope at the expert services' thread count).
2. Transfer per byte: the tensor codec both ways plus a loopback socket (B).
3. Functions through the local platform, one per memory size (1 GiB buys one thread, up to the cores):
   cold start to the first answer, warm invocation overhead (t_rem, a one-token batch) and the remote
   seconds per token T(y) (the slope between a one-token and a large batch, less the transfer), fitted to
   T(y) = th1 exp(-th2 y) + th3.
4. The backbone end to end through `remoe up` with every expert on the expert services: TTFT at the
   prompt lengths and TPOT, as the SDK client sees them, give the backbone's per-layer prefill (fixed + per
   token) and decode times (at no context + per token of context: a step attends to the prompt and the tokens
   before it), the expert compute and transfer subtracted. Each configuration is timed in rounds over the prompt
   lengths for at least `min_decode_s` of decode: a short sample is off by the machine's own noise.
5. The one-device systems the same way: the whole model in this process (LocalEngine: the CPU system) and
   `remoe up` with every expert in the backbone process (the GPU system; on a CPU-only machine, its cores).
Everything measured is kept in the report's samples; the fit's points are plotted.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from remoe.constants import DECODE_SAMPLE_S
from remoe.profiling.measure import (
    MEMORY_SIZES_GB,
    PROMPT_LENGTHS,
    line_fit,
    measure_bandwidth,
    measure_end_to_end,
    measure_experts,
    measure_functions,
    measure_in_process,
)
from remoe.scheduler.problem import Profile
from remoe.scheduler.profile_file import ProfileReport, fit_remote


def profile_model(
    model_dir: str | Path,
    quick: bool = False,
    progress: bool = True,
    run_dir: str | Path | None = None,
    min_decode_s: float | None = None,
) -> ProfileReport:
    """Every speed of the cost model for `model_dir` on this machine. `min_decode_s`: decode seconds each
    end-to-end configuration times at least (default: 0 with `quick`, else DECODE_SAMPLE_S)."""
    from tqdm.auto import tqdm

    from remoe.machine import machine_description
    from remoe.scheduler.shape import shape_of_model

    model_dir = Path(model_dir).resolve()
    shape = shape_of_model(model_dir)
    repeats = 5 if quick else 11
    if min_decode_s is None:
        min_decode_s = 0.0 if quick else DECODE_SAMPLE_S
    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="remoe-profile-"))
    steps = 3 + (3 if quick else len(MEMORY_SIZES_GB)) + 5 * len(PROMPT_LENGTHS)
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
    _, t_loc = line_fit(*zip(*experts[service_threads], strict=True))
    t_loc = max(t_loc, 1e-9)
    # A 1 GB function computes with one thread: its fixed cost per expert per batch is that line's intercept.
    expert_call = max(line_fit(*zip(*experts[1], strict=True))[0], 0.0)
    d_over_b = 2 * shape.hidden_bytes_per_token / bandwidth
    ys = sorted(functions)
    remote = [max((functions[y][f"rtt_{big}_s"] - functions[y]["rtt_1_s"]) / (big - 1) - d_over_b, 1e-9) for y in ys]
    fit = fit_remote(ys, remote)
    rtt = statistics.median(functions[y]["rtt_1_s"] for y in ys)
    cold = functions[ys[0]]["cold_start_s"]
    new_tokens, e2e_repeats = (8 if quick else 16), max(2, repeats // 2)
    sampled = {"min_decode_s": min_decode_s}
    e2e = measure_end_to_end(model_dir, run_dir / "cluster", new_tokens, e2e_repeats, step, **sampled)
    half = shape.experts // 2
    one = measure_end_to_end(model_dir, run_dir / "cluster-one", new_tokens, e2e_repeats, step, half, **sampled)
    two = measure_end_to_end(
        model_dir, run_dir / "cluster-two", new_tokens, e2e_repeats, step, half, replicas=2, **sampled
    )
    in_backbone = measure_end_to_end(
        model_dir, run_dir / "cluster-in-backbone", new_tokens, e2e_repeats, step, expert_services=0, **sampled
    )
    in_process = measure_in_process(model_dir, new_tokens, e2e_repeats, step, min_decode_s)
    # In one process the experts compute with every core.
    _, t_all = line_fit(*zip(*experts[max(experts)], strict=True))
    t_all = max(t_all, 1e-9)
    layers, k = shape.layers, shape.top_k
    swap = shape.hidden_bytes_per_token / bandwidth
    # All local: TTFT = L (a + n_in (b + 2 tau + k t_loc)), a and b from the line through the prompt lengths;
    # TPOT = L (decode + context c + 2 tau + k t_loc), decode and c from the line through the mean contexts. The
    # fan-out to the expert services is part of a and decode.
    lengths = sorted(e2e)
    intercept, slope = line_fit(lengths, [e2e[n]["ttft_s"] / layers for n in lengths])
    prefill_token = max(slope - 2 * swap - k * t_loc, 0.0)
    prefill_layer = max(intercept, 0.0)
    decode, per_context = decode_line(e2e, layers, new_tokens)
    decode = max(decode - 2 * swap - k * t_loc, 0.0)
    # With z functions per layer the remote side is the slower one: TPOT / L = decode + 2 tau + z t_dispatch +
    # k' T(1) + 2 D / B + t_rem. One and two functions per layer give t_dispatch (serial, in the backbone) and
    # t_rem (in parallel) as the backbone sees them, contention for the cores included; the function's bare
    # round trip is kept in the samples.
    t_remote_1gb = fit[0] * np.exp(-fit[1]) + fit[2]

    def extra(rows: dict, z: int) -> float:
        per_layer = statistics.median(
            rows[n]["tpot_s"] / layers - per_context * decode_context(n, new_tokens) for n in lengths
        )
        return per_layer - decode - 2 * swap - min(k, half // z) * (t_remote_1gb + expert_call) - d_over_b

    cpu_layer, cpu_token, cpu_decode, cpu_context = one_device_speeds(in_process, layers, k, t_all, new_tokens)
    gpu_layer, gpu_token, gpu_decode, gpu_context = one_device_speeds(in_backbone, layers, k, t_all, new_tokens)
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
        backbone_decode_s_per_context_token=per_context,
        swap_s_per_token=swap,
        invoke_s=invoke,
        dispatch_s=dispatch,
        expert_call_s=expert_call,
        bandwidth_bytes_s=bandwidth,
        cold_start_s=cold,
        remote_fit=fit,
        cpu_backbone_prefill_s_per_token=cpu_token,
        cpu_backbone_prefill_layer_s=cpu_layer,
        cpu_backbone_decode_s=cpu_decode,
        cpu_backbone_decode_s_per_context_token=cpu_context,
        cpu_expert_s_per_token=t_all,
        gpu_backbone_prefill_s_per_token=gpu_token,
        gpu_backbone_prefill_layer_s=gpu_layer,
        gpu_backbone_decode_s=gpu_decode,
        gpu_backbone_decode_s_per_context_token=gpu_context,
        gpu_expert_s_per_token=t_all,
        device="cpu",
        function_host_cores=os.cpu_count() or 1,  # its functions ran as processes here, as `remoe up` runs them
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
        "end_to_end_in_backbone": {str(n): v for n, v in in_backbone.items()},
        "in_process": {str(n): v for n, v in in_process.items()},
        "function_round_trip_s": rtt,
        "decode_new_tokens": new_tokens,  # tokens each latency row generated: its decode context (decode_context)
        "min_decode_s": min_decode_s,  # decode seconds each end-to-end configuration timed at least
    }
    notes = [
        "backbone_* include the fan-out to the expert services (one gRPC round trip per layer), the gateway, the "
        "stream to the client and Python overheads: the backbone ran on this machine's CPU",
        "cpu_backbone_*: the whole model in one process (LocalEngine); gpu_backbone_*: remoe up with every expert "
        "in the backbone process. Both per MoE layer, with the experts at every core's rate (*_expert_s_per_token); "
        f"{'the backbone ran on the GPU' if profile.device != 'cpu' else 'there is no GPU here: both ran on the CPU'}",
        f"functions: 1 GiB buys one thread, capped at {os.cpu_count()} cores, so T(y) is flat above that",
        "function_host_cores: the functions shared this host's cores with the backbone and each other, as under "
        "`remoe up`; set it to 0 where each function gets a CPU share of its own (Knative, a serverless platform)",
    ]
    return ProfileReport(
        shape.name,
        machine_description(),
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        profile,
        samples,
        notes,
    )


def decode_context(prompt_tokens: int, new_tokens: int) -> float:
    """Mean tokens a measured decode step attended to (as `remoe.scheduler.estimate.decode_context`)."""
    return prompt_tokens + new_tokens / 2


def decode_line(rows: dict, layers: int, new_tokens: int) -> tuple[float, float]:
    """(seconds per MoE layer per decode step at no context, seconds more per token attended to): the line
    through TPOT / L at each prompt length's mean context. A slope below zero is noise: then the median, flat."""
    lengths = sorted(rows)
    per_layer = [rows[n]["tpot_s"] / layers for n in lengths]
    at_zero, slope = line_fit([decode_context(n, new_tokens) for n in lengths], per_layer)
    if slope <= 0:
        return statistics.median(per_layer), 0.0
    return at_zero, slope


def one_device_speeds(
    rows: dict, layers: int, top_k: int, expert_s: float, new_tokens: int
) -> tuple[float, float, float, float]:
    """(fixed prefill s, prefill s per token, decode s at no context, decode s per context token), each per MoE
    layer, of a system with every expert beside the backbone: TTFT = L (a + n_in (b + k t)) through the prompt
    lengths, TPOT = L (decode + context c + k t)."""
    lengths = sorted(rows)
    intercept, slope = line_fit(lengths, [rows[n]["ttft_s"] / layers for n in lengths])
    decode, per_context = decode_line(rows, layers, new_tokens)
    return max(intercept, 0.0), max(slope - top_k * expert_s, 0.0), max(decode - top_k * expert_s, 0.0), per_context


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
