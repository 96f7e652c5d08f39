"""Which CPU kernel quantized experts use, at DeepSeek-V2-Lite's expert shape (hidden 2048, intermediate 1408),
against the read bandwidth measured in the same run.

Candidates, each an expert FFN `down(silu(x gate^T) * (x up^T))` over 16 experts, 1, 4 and 8 tokens each; before
every timed call a 128 MB buffer is read, so the experts come from DRAM as in a decode step (int4's 73 MB of 16
experts run back to back were otherwise partly served from a 32 MB L3: 42 GB/s, above the read bandwidth):
- bf16: `F.linear` on bf16 weights, on weights reordered once for oneDNN, and Remoe's native kernel (gated_mlp.c,
  the fast bf16 path: all 16 experts in one call, as a layer runs): the baselines;
- int8 (symmetric per output channel): torch's `_weight_int8pack_mm`, dequantize-then-`F.linear`, and the native
  kernel in its float packing and its VNNI packing (activations quantized to int8 per 32 columns);
- int4 (asymmetric, group 128 and 32): torch's `_weight_int4pack_mm_for_cpu` on weights packed by
  `_convert_weight_to_int4pack_for_cpu`, and the native kernel's float and VNNI packings (group 128, Remoe's
  `remoe split --expert-dtype int4` format).
Each candidate's output is checked against float32 math on the same dequantized weights first. Candidates and
the bandwidth ceiling run in rounds (each round runs every one once) and the best of the rounds is kept, so the
machine's noise falls on all alike. GB/s counts the bytes a candidate reads: its packed weights and scales.

Usage: python bench/quantized_kernels.py [--rounds 7] [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardware_limit import Ceilings  # noqa: E402

from remoe.machine import machine_description  # noqa: E402

HIDDEN, INTERMEDIATE = 2048, 1408  # DeepSeek-V2-Lite's routed expert
EXPERTS = 16
EVICT_MB = 128  # read before each timed call: more than any L3 this runs on holds
TOKENS = [1, 4, 8]
GB = 1e9


def _int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w [N, K] -> (q [N, K] int8, scale [N] bf16)."""
    scale = (w.float().abs().amax(dim=1) / 127).clamp(min=1e-8)
    q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.to(torch.bfloat16)


def _int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise uint4 as torch's int4 kernel reads it: w = (q - 8) * scale + zero per group of
    `group` input columns. Returns (q [N, K] int32, scales_and_zeros [K/group, N, 2] bf16, dequantized [N, K])."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15)
    zero = lo + 8 * scale  # so that (q - 8) * scale + zero = lo + q * scale
    sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)  # [K/group, N, 2]
    s = sz[..., 0].float().transpose(0, 1)[..., None]
    z = sz[..., 1].float().transpose(0, 1)[..., None]
    dequantized = ((q - 8) * s + z).reshape(n, k)
    return q.reshape(n, k).to(torch.int32), sz, dequantized


class Candidate:
    """One kernel over EXPERTS experts: `run(x)` computes every expert on x [T, H]; `nbytes` what it reads."""

    def __init__(self, name: str, experts: list, expert_fn: Callable, nbytes: int, reference: list) -> None:
        self.name, self.experts, self.expert_fn, self.nbytes = name, experts, expert_fn, nbytes
        self.reference = reference  # per expert: float32 (gate, up, down) of the weights it computes with

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.expert_fn(x, *e) for e in self.experts]

    def _wants(self, x: torch.Tensor) -> list[torch.Tensor]:
        xf = x.float()
        return [F.linear(F.silu(F.linear(xf, gate)) * F.linear(xf, up), down) for gate, up, down in self.reference]

    def max_rel_error(self, x: torch.Tensor) -> float:
        pairs = zip(self.run(x), self._wants(x), strict=True)
        return max(float((out.float() - want).abs().max() / want.abs().max()) for out, want in pairs)


class LayerCandidate(Candidate):
    """Remoe's native kernel: one call computes every expert on every row (as a layer's batch does, each row routed
    to all EXPERTS experts with weight 1), so `run` returns their sum."""

    def __init__(self, name: str, kernel, prepared: dict, nbytes: int, reference: list) -> None:
        super().__init__(name, [], lambda: None, nbytes, reference)
        self.kernel, self.prepared = kernel, prepared

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        index = torch.arange(len(self.prepared)).repeat(x.shape[0], 1)  # [T, E]
        return [self.kernel.compute(self.prepared, x.float(), index, torch.ones(index.shape))]

    def _wants(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.stack(super()._wants(x)).sum(dim=0)]


def native_candidates(weights: list[list[torch.Tensor]]) -> list[Candidate]:
    """Remoe's native kernel over the same experts: bf16 as stored, int8 and int4 g128 in both packings."""
    from torch import nn

    from remoe.checkpoint.quantized import INT4, INT8, quantize
    from remoe.experts.kernels import native
    from remoe.experts.kernels.backends import GatedWeights, NativeKernel
    from remoe.experts.kernels.family import GatedFamily

    if native.load() is None:
        print(f"native kernel skipped: {native.unavailable_reason()}", file=sys.stderr)
        return []
    family = GatedFamily(HIDDEN, INTERMEDIATE, nn.SiLU(), act_is_silu=True)
    fused = [(torch.cat([gate, up]), down) for gate, up, down in weights]  # gate_up [2I, H] as Remoe stores it
    out: list[Candidate] = []
    kernel = NativeKernel(family, torch.float32, "bfloat16")
    prepared = {e: kernel.prepare({"gate_up_proj": gu, "down_proj": dn})[0] for e, (gu, dn) in enumerate(fused)}
    ref = [[m.float() for m in e] for e in weights]
    out.append(LayerCandidate("bf16 native", kernel, prepared, sum(p.nbytes for p in prepared.values()), ref))

    def pack(w, vnni: bool):
        return (
            native.pack_int8(w.qweight, w.scale, vnni)
            if w.dtype == INT8
            else native.pack_int4(w.qweight, w.scale, w.min, vnni)
        )

    for fmt, label in ((INT8, "int8"), (INT4, "int4 g128")):
        quantized = [(quantize(gu, fmt, 128), quantize(dn, fmt, 128)) for gu, dn in fused]
        ref_q = [[*gu.dequantize().chunk(2), dn.dequantize()] for gu, dn in quantized]
        for vnni in (False, True):
            if vnni and not native.vnni_fits(HIDDEN, 128):
                continue
            prepared = {e: GatedWeights(pack(gu, vnni), pack(dn, vnni)) for e, (gu, dn) in enumerate(quantized)}
            name = f"{label} native {'VNNI' if vnni else 'float'}"
            kernel = NativeKernel(family, torch.float32, fmt)
            out.append(LayerCandidate(name, kernel, prepared, sum(p.nbytes for p in prepared.values()), ref_q))
    return out


def _ffn(linear: Callable) -> Callable:
    def expert(x, gate, up, down):
        return linear(F.silu(linear(x, gate)) * linear(x, up), down)

    return expert


def candidates(weights: list[list[torch.Tensor]]) -> list[Candidate]:
    """weights: per expert [gate [I, H], up [I, H], down [H, I]] in bf16."""
    out = []
    ref = [[m.float() for m in e] for e in weights]
    nbytes = sum(m.numel() * 2 for e in weights for m in e)
    out.append(Candidate("bf16 F.linear", weights, _ffn(F.linear), nbytes, ref))
    reorder, onednn = torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
    prepacked = [[reorder(m.contiguous()) for m in e] for e in weights]
    out.append(
        Candidate(
            "bf16 oneDNN prepacked", prepacked, _ffn(lambda x, w: onednn(x, w, None, "none", [], "")), nbytes, ref
        )
    )

    int8 = [[_int8(m) for m in e] for e in weights]
    ref8 = [[q.float() * s.float()[:, None] for q, s in e] for e in int8]
    bytes8 = sum(q.numel() + s.numel() * 2 for e in int8 for q, s in e)
    out.append(
        Candidate(
            "int8 _weight_int8pack_mm",
            int8,
            _ffn(lambda x, qs: torch._weight_int8pack_mm(x, qs[0], qs[1])),
            bytes8,
            ref8,
        )
    )
    out.append(
        Candidate(
            "int8 dequantize + F.linear",
            int8,
            _ffn(lambda x, qs: F.linear(x, qs[0].to(torch.bfloat16) * qs[1][:, None])),
            bytes8,
            ref8,
        )
    )
    for group in (128, 32):
        int4 = [[_int4(m, group) for m in e] for e in weights]
        packed = [[(torch._convert_weight_to_int4pack_for_cpu(q, 2), sz) for q, sz, _ in e] for e in int4]
        ref4 = [[d for _, _, d in e] for e in int4]
        bytes4 = sum(p.numel() * p.element_size() + sz.numel() * 2 for e in packed for p, sz in e)
        out.append(
            Candidate(
                f"int4 g{group} _weight_int4pack_mm_for_cpu",
                packed,
                _ffn(lambda x, p, group=group: torch._weight_int4pack_mm_for_cpu(x, p[0], group, p[1])),
                bytes4,
                ref4,
            )
        )
    return out


def measure(rounds: int) -> dict:
    torch.manual_seed(0)
    weights = [
        [
            torch.randn(INTERMEDIATE, HIDDEN, dtype=torch.bfloat16) / HIDDEN**0.5,
            torch.randn(INTERMEDIATE, HIDDEN, dtype=torch.bfloat16) / HIDDEN**0.5,
            torch.randn(HIDDEN, INTERMEDIATE, dtype=torch.bfloat16) / INTERMEDIATE**0.5,
        ]
        for _ in range(EXPERTS)
    ]
    cands = candidates(weights) + native_candidates(weights)
    fast_bf16 = "bf16 native" if any(c.name == "bf16 native" for c in cands) else "bf16 oneDNN prepacked"
    inputs = {t: torch.randn(t, HIDDEN, dtype=torch.bfloat16) for t in TOKENS}
    errors = {c.name: c.max_rel_error(inputs[4]) for c in cands}
    best = {(c.name, t): float("inf") for c in cands for t in TOKENS}
    ratios: dict[tuple[str, int], list[float]] = {key: [] for key in best}  # GB/s over the same round's bandwidth
    ceilings = Ceilings()
    evict = torch.rand(EVICT_MB * 2**20 // 4)
    with torch.inference_mode():
        for c in cands:  # warm-up
            for t in TOKENS:
                c.run(inputs[t])
        for _ in range(rounds):
            ceilings.round()
            for c in cands:
                for t in TOKENS:
                    evict.sum()
                    start = time.perf_counter()
                    c.run(inputs[t])
                    seconds = time.perf_counter() - start
                    best[c.name, t] = min(best[c.name, t], seconds)
                    ratios[c.name, t].append(c.nbytes / seconds / GB / ceilings.read_gb_s_by_round[-1])
    bandwidth, _ = ceilings.result()
    bandwidth["read_gb_s_by_round"] = ceilings.read_gb_s_by_round
    rows = []
    for c in cands:
        for t in TOKENS:
            seconds = best[c.name, t]
            gb_s = c.nbytes / seconds / GB
            rows.append(
                {
                    "kernel": c.name,
                    "tokens": t,
                    "ms": seconds * 1e3,
                    "mb_read": c.nbytes / 1e6,
                    "gb_s": gb_s,
                    "of_read_bandwidth": gb_s / bandwidth["read_gb_s"],  # best over best
                    "of_round_bandwidth": statistics.median(ratios[c.name, t]),  # median of the rounds' ratios
                    "speedup_vs_bf16": best["bf16 F.linear", t] / seconds,
                    "speedup_vs_onednn_bf16": best["bf16 oneDNN prepacked", t] / seconds,
                    "speedup_vs_fast_bf16": best[fast_bf16, t] / seconds,
                    "max_rel_error": errors[c.name],
                }
            )
    return {
        "machine": machine_description(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "shape": {"hidden": HIDDEN, "intermediate": INTERMEDIATE, "experts": EXPERTS},
        "rounds": rounds,
        "fast_bf16": fast_bf16,
        "bandwidth": bandwidth,
        "rows": rows,
    }


def headline(r: dict) -> list[str]:
    """The issue's targets read off this run: each quantized native kernel at 1 token, bandwidth and speed-up."""
    rows = {(row["kernel"], row["tokens"]): row for row in r["rows"]}
    lines = []
    for name in ("int8 native VNNI", "int4 g128 native VNNI"):
        row = rows.get((name, 1))
        if row:
            lines.append(
                f"- **{name}, 1 token**: {row['gb_s']:.1f} GB/s in its own bytes, {row['of_read_bandwidth']:.0%} of "
                f"the best read bandwidth, {_round_share(row)} of its own round's (median); "
                f"{row['speedup_vs_fast_bf16']:.2f}x the fast bf16 path ({r['fast_bf16']})."
            )
    return lines


def _round_share(row: dict) -> str:
    share = row.get("of_round_bandwidth")  # absent in results from before it was measured
    return "-" if share is None else f"{share:.0%}"


def write_markdown(r: dict, path: Path) -> None:
    bw = r["bandwidth"]
    by_round = bw.get("read_gb_s_by_round") or [bw["read_gb_s"]]
    lines = [
        "# Quantized expert kernels on the CPU",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Written by `python bench/quantized_kernels.py`.",
        "",
        f"{r['shape']['experts']} experts of DeepSeek-V2-Lite's shape (hidden {r['shape']['hidden']}, intermediate "
        f"{r['shape']['intermediate']}: gate, up, down), each token set through all of them, best of {r['rounds']} "
        f"rounds, each call after reading {EVICT_MB} MB (the experts come from DRAM). Read bandwidth in the same run: "
        f"{bw['read_gb_s']:.1f} GB/s at best ({bw['threads']} threads), {min(by_round):.1f} to {max(by_round):.1f} "
        "GB/s from round to round (this machine is shared): `of read bw` is a kernel's best GB/s over the best "
        "bandwidth, `of round bw` the median over rounds of its GB/s over the bandwidth of the same round. GB/s "
        "counts what each kernel reads (packed weights and scales); `max rel error` is against float32 math on the "
        "same dequantized weights (torch's kernels: bf16 activations and accumulation; the native float packings: "
        "float32; the native VNNI packings: activations quantized to int8 per 32 columns). int8: symmetric per "
        "output channel; int4: asymmetric per group of input columns. `vs fast bf16` is against "
        f"`{r['fast_bf16']}`, Remoe's bf16 path.",
        "",
        *headline(r),
        "",
        "| kernel | tokens | ms | MB read | GB/s | of read bw | of round bw | vs bf16 F.linear | vs fast bf16 | "
        "max rel error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['kernel']} | {row['tokens']} | {row['ms']:.2f} | {row['mb_read']:.1f} | {row['gb_s']:.1f} | "
            f"{row['of_read_bandwidth']:.0%} | {_round_share(row)} | {row['speedup_vs_bf16']:.2f}x | "
            f"{row['speedup_vs_fast_bf16']:.2f}x | {row['max_rel_error']:.1e} |"
        )
    lines += [
        "",
        "Why VNNI: the float packings widen every weight to float32 in registers, which costs more instructions per "
        "int4 byte than the memory delivers; `vpdpbusd` multiplies 64 weight bytes by 4 int8 activations each in one "
        "instruction, so the quantized kernels stay bound by memory at 1 token. Past a few tokens every kernel here "
        "is bound by arithmetic (this CPU has no AMX), and int8 and int4 do the same multiplies per weight.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every candidate (the best is kept)")
    parser.add_argument("--out", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    write(measure(args.rounds), args.out)
    print((args.out / "quantized_kernels.md").read_text())


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantized_kernels.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result, out / "quantized_kernels.md")


if __name__ == "__main__":
    main()
