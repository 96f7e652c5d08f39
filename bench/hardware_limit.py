"""CPU expert compute against this machine's own limits, measured in one run.

- Decode (1-8 tokens, top-6 of 64 experts, DeepSeek-V2-Lite's expert shape): the achieved GB/s of expert
  weights read per call (distinct experts touched x bytes per expert / seconds), against the memory bandwidth a
  read and a copy benchmark reach in the same run. At decode an expert FFN is a matrix-vector product, bound
  by memory, so the bandwidth is its ceiling.
- Prefill (64-512 tokens): the achieved GFLOP/s (2 x 3 matrices x hidden x intermediate per token-expert pair)
  against a large square matmul's in the same dtype.
The experts are computed by Remoe's own expert executor with every kernel candidate side by side (the
architecture's class, aten, onednn-prepacked, native), in the checkpoint's dtype (bf16), every expert loaded
beforehand. Candidates and ceilings are measured in rounds (each round runs every one once) and the best of
the rounds is kept, so the machine's noise falls on all of them alike. The read ceiling is measured the way
the kernels use the machine: all torch threads, a sum and a copy over 512 MB arrays, the best of the two.

Usage: python bench/hardware_limit.py [--repeats 5] [--quick] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from remoe.checkpoint.weights import open_weights
from remoe.experts.executor import LocalExpertExecutor
from remoe.machine import machine_description

DECODE_TOKENS = [1, 2, 4, 8]
PREFILL_TOKENS = [64, 128, 256, 512]
CANDIDATES = ["class", "aten", "onednn", "native"]
GB = 1e9


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` runs after one warm-up: the machine's capability, not its noise."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class Ceilings:
    """The machine's read bandwidth (all threads: a sum, and the read half of a copy) and matmul rates, measured
    once per round beside the candidates; the best of the rounds is kept."""

    def __init__(self, megabytes: int = 512, n: int = 2048) -> None:
        count = megabytes * 2**20 // 4
        self.src, self.dst = torch.rand(count), torch.empty(count)
        self.nbytes, self.megabytes, self.n = count * 4, megabytes, n
        self.mats = {
            dt: (torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)) for dt in (torch.bfloat16, torch.float32)
        }
        self.best = {"sum_s": float("inf"), "copy_s": float("inf"), "bf16_s": float("inf"), "fp32_s": float("inf")}
        self.read_gb_s_by_round: list[float] = []  # this round's read bandwidth: the machine's moves during a run

    def round(self) -> None:
        seconds = {}
        for key, fn in (
            ("sum_s", lambda: self.src.sum()),
            ("copy_s", lambda: self.dst.copy_(self.src)),
            ("bf16_s", lambda: self.mats[torch.bfloat16][0] @ self.mats[torch.bfloat16][1]),
            ("fp32_s", lambda: self.mats[torch.float32][0] @ self.mats[torch.float32][1]),
        ):
            t = time.perf_counter()
            fn()
            seconds[key] = time.perf_counter() - t
            self.best[key] = min(self.best[key], seconds[key])
        self.read_gb_s_by_round.append(max(self.nbytes / seconds["sum_s"], self.nbytes / seconds["copy_s"]) / GB)

    def result(self) -> tuple[dict, dict]:
        b = self.best
        sum_gb_s, copy_gb_s = self.nbytes / b["sum_s"] / GB, 2 * self.nbytes / b["copy_s"] / GB
        bandwidth = {
            "read_gb_s": max(sum_gb_s, copy_gb_s / 2),
            "sum_gb_s": sum_gb_s,
            "copy_gb_s": copy_gb_s,
            "array_mb": self.megabytes,
            "threads": torch.get_num_threads(),
        }
        flops = 2 * self.n**3 / GB
        return bandwidth, {"bf16": flops / b["bf16_s"], "fp32": flops / b["fp32_s"]}


def raw_gemv_gb_s(hidden: int, intermediate: int, dtype: torch.dtype, repeats: int) -> float:
    """GB/s of one token through bare torch linear layers of an expert's three matrices (no executor): the
    kernel's own ceiling for this shape, separating library efficiency from Remoe's per-expert overhead."""
    mats = [torch.randn(intermediate, hidden, dtype=dtype) for _ in range(2)] + [
        torch.randn(hidden, intermediate, dtype=dtype)
    ]
    x = torch.randn(1, hidden, dtype=dtype)
    experts = 16  # a few experts' worth, so the weights do not sit in cache between calls
    sets = [[m.clone() for m in mats] for _ in range(experts)]

    def run() -> None:
        for gate, up, down in sets:
            torch.nn.functional.linear(torch.nn.functional.silu(x @ gate.T) * (x @ up.T), down)

    nbytes = experts * sum(m.numel() * m.element_size() for m in mats)
    return nbytes / best_time(run, repeats) / GB


def checkpoint(out: Path) -> Path:
    """DeepSeek-V2-Lite's shape with two layers (one dense, one MoE of 64 experts), random init, bf16."""
    from transformers import AutoModelForCausalLM

    from remoe.scheduler.shape import paper_model_config

    config, dtype = paper_model_config("deepseek-v2-lite", 2)
    config.vocab_size = 1024  # the embedding and head play no part here; a small vocabulary saves a 0.8 GB write
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(out)
    return out


def routing(tokens: int, experts: int, top_k: int, rng: np.random.Generator) -> torch.Tensor:
    """[T, K] distinct experts per token, uniformly at random (a forecast-free worst case for reuse)."""
    return torch.tensor(np.stack([rng.choice(experts, top_k, replace=False) for _ in range(tokens)]))


def expert_compute(model_dir: Path, repeats: int, quick: bool, ceilings: Ceilings) -> dict:
    from remoe.experts.kernels import native

    weights = open_weights(model_dir)
    arch = weights.arch
    layer = arch.moe_layers[0]
    dtype = torch.bfloat16
    candidates = [c for c in CANDIDATES if c != "native" or native.load() is not None]
    executors = {}
    for kernel in candidates:
        executors[kernel] = LocalExpertExecutor(weights, dtype=dtype, kernel=kernel)
        assert executors[kernel].kernels[layer.layer].name == kernel, executors[kernel].kernel_reasons
        for e in range(layer.num_experts):
            executors[kernel].preload(layer.layer, e)
        print(f"loaded 64 experts for the {kernel} kernel", file=sys.stderr, flush=True)
    expert_bytes = weights.expert_nbytes_as(layer.layer, 0, dtype)
    hidden, intermediate, k = arch.hidden_size, arch.config.moe_intermediate_size, arch.top_k
    rng = np.random.default_rng(0)
    cases = []  # (phase, tokens, index, x, gate)
    for phase, sizes in (("decode", DECODE_TOKENS), ("prefill", PREFILL_TOKENS[:2] if quick else PREFILL_TOKENS)):
        for tokens in sizes:
            index = routing(tokens, layer.num_experts, k, rng)
            x, gate = torch.randn(tokens, hidden, dtype=dtype), torch.full((tokens, k), 1.0 / k, dtype=dtype)
            cases.append((phase, tokens, index, x, gate))
    best = {(c[0], c[1], kernel): float("inf") for c in cases for kernel in candidates}
    for phase, tokens, index, x, gate in cases:  # warm-up, and every kernel agrees with the class
        want = executors["class"].compute(layer.layer, x, index, gate).float()
        for kernel in candidates:
            got = executors[kernel].compute(layer.layer, x, index, gate).float()
            err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-6)
            assert err < 0.05, f"{kernel} {phase} {tokens}: relative error {err:.3f} against the class"
    for r in range(repeats):
        ceilings.round()
        for phase, tokens, index, x, gate in cases:
            if phase == "prefill" and r >= max(2, repeats // 2):
                continue
            for kernel in candidates:
                t = time.perf_counter()
                executors[kernel].compute(layer.layer, x, index, gate)
                best[(phase, tokens, kernel)] = min(best[(phase, tokens, kernel)], time.perf_counter() - t)
        print(f"round {r + 1}/{repeats}", file=sys.stderr, flush=True)
    decode, prefill = [], []
    for phase, tokens, index, _, _ in cases:
        row = {"tokens": tokens}
        if phase == "decode":
            touched = len(set(index.flatten().tolist()))
            row |= {"experts_touched": touched}
            row |= {kernel: touched * expert_bytes / best[(phase, tokens, kernel)] / GB for kernel in candidates}
            decode.append(row)
        else:
            flops = tokens * k * 2 * 3 * hidden * intermediate
            prefill.append(row | {kernel: flops / best[(phase, tokens, kernel)] / GB for kernel in candidates})
    return {
        "raw_gemv_gb_s": raw_gemv_gb_s(hidden, intermediate, dtype, repeats),
        "expert_bytes": expert_bytes,
        "hidden": hidden,
        "intermediate": intermediate,
        "experts": layer.num_experts,
        "top_k": k,
        "dtype": "bfloat16",
        "kernels": candidates,
        "chosen": executors_choice(weights, dtype),
        "decode": decode,  # GB/s of expert weights per kernel
        "prefill": prefill,  # GFLOP/s per kernel
    }


def executors_choice(weights, dtype) -> str:
    """What `auto` picks for this layer on this machine."""
    executor = LocalExpertExecutor(weights, dtype=dtype, hosted=[])
    return next(iter(executor.kernel_reasons.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer prefill sizes and repeats")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    args.out.mkdir(parents=True, exist_ok=True)
    ceilings = Ceilings()
    with tempfile.TemporaryDirectory(prefix="remoe-hw-") as tmp:
        print("a DeepSeek-V2-Lite-shaped MoE layer (64 experts, bf16) ...", file=sys.stderr, flush=True)
        experts = expert_compute(checkpoint(Path(tmp)), repeats, args.quick, ceilings)
    bandwidth, matmul = ceilings.result()
    results = {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "bandwidth": bandwidth,
        "matmul_gflop_s": matmul,
        "experts": experts,
    }
    (args.out / "hardware_limit.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, args.out / "hardware_limit.md")
    plot(results, args.out / "hardware_limit.png")
    print((args.out / "hardware_limit.md").read_text())


def write_markdown(r: dict, path: Path) -> None:
    e, bw, mm = r["experts"], r["bandwidth"], r["matmul_gflop_s"]
    kernels = e["kernels"]
    lines = [
        "# CPU expert compute vs this machine's limits",
        "",
        f"{r['machine']}; {r['date']}. One MoE layer of DeepSeek-V2-Lite's shape ({e['experts']} experts, top-"
        f"{e['top_k']}, hidden {e['hidden']}, expert FFN {e['intermediate']}, {e['dtype']}: "
        f"{e['expert_bytes'] / 1e6:.1f} MB per expert), computed by Remoe's expert executor with each kernel, every "
        "expert loaded; candidates and ceilings measured in the same rounds, best of the rounds.",
        "",
        f"Ceilings measured in the same run, with all {bw['threads']} torch threads: memory read "
        f"{bw['read_gb_s']:.1f} GB/s (the best of a sum, {bw['sum_gb_s']:.1f}, and the read half of a copy, "
        f"{bw['copy_gb_s'] / 2:.1f}, over {bw['array_mb']} MB arrays); square matmul {mm['bf16']:.1f} GFLOP/s in "
        f"bf16, {mm['fp32']:.1f} in fp32.",
        "",
        f"What `auto` takes here: {e['chosen']}.",
        "",
        "## Decode: expert weights read per second (GB/s, and share of the read bandwidth)",
        "",
        "| tokens | experts touched | " + " | ".join(kernels) + " |",
        "|---|---|" + "---|" * len(kernels),
    ]
    for d in e["decode"]:
        cells = [f"{d[k]:.2f} ({d[k] / bw['read_gb_s']:.0%})" for k in kernels]
        lines.append(f"| {d['tokens']} | {d['experts_touched']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Prefill: arithmetic rate (GFLOP/s, and share of the bf16 matmul rate)",
        "",
        "| tokens | " + " | ".join(kernels) + " |",
        "|---|" + "---|" * len(kernels),
    ]
    for p in e["prefill"]:
        cells = [f"{p[k]:.1f} ({p[k] / mm['bf16']:.0%})" for k in kernels]
        lines.append(f"| {p['tokens']} | " + " | ".join(cells) + " |")
    raw = e["raw_gemv_gb_s"]
    best = max(kernels, key=lambda k: e["decode"][0][k])
    lines += [
        "",
        f"Bare torch, one token through an expert's three {e['dtype']} matrices (F.linear, no executor, 16 experts in "
        f"turn): {raw:.2f} GB/s, {raw / bw['read_gb_s']:.0%} of the read bandwidth.",
        "",
        f"Reading: at one decode token the best kernel is {best}, at "
        f"{e['decode'][0][best] / bw['read_gb_s']:.0%} of the read bandwidth. The class and aten kernels run torch's "
        "bf16 F.linear on plain weights; onednn reorders the weights once for oneDNN; native (gated_mlp.c) streams "
        "weights packed in 16-row blocks, widening bf16 to float32 in registers, one call per layer. Where the CPU "
        "has no bf16 matrix units (no AMX / AVX512-BF16), torch's bf16 matmuls are emulated, which is why the bf16 "
        "square matmul is slower than fp32 and the native kernel's float32 arithmetic can exceed it in prefill.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(r: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = r["experts"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for kernel in e["kernels"]:
        left.plot([d["tokens"] for d in e["decode"]], [d[kernel] for d in e["decode"]], "o-", label=kernel)
        right.plot([p["tokens"] for p in e["prefill"]], [p[kernel] for p in e["prefill"]], "o-", label=kernel)
    left.axhline(r["bandwidth"]["read_gb_s"], color="#d62", ls="--", label="memory read")
    left.set(xlabel="tokens per call", ylabel="GB/s", title="decode: weight bytes per second", xscale="log")
    left.set_xticks(DECODE_TOKENS)
    left.set_xticklabels(DECODE_TOKENS)
    left.legend(fontsize=7)
    right.axhline(r["matmul_gflop_s"]["bf16"], color="#d62", ls="--", label="bf16 matmul")
    right.axhline(r["matmul_gflop_s"]["fp32"], color="#888", ls=":", label="fp32 matmul")
    right.set(xlabel="tokens per call", ylabel="GFLOP/s", title="prefill: arithmetic rate", xscale="log")
    right.set_xticks(PREFILL_TOKENS)
    right.set_xticklabels(PREFILL_TOKENS)
    for ax in (left, right):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.legend(fontsize=7)
    fig.suptitle(r["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
