"""`remoe inspect`'s lines on expert kernels: which path each MoE layer takes on this machine, and why."""

from __future__ import annotations

import torch

from remoe.checkpoint.dtypes import resolve_dtype
from remoe.checkpoint.weights import ModelWeights
from remoe.experts.kernels.select import choose_kernel, for_stored_format


def kernel_report(weights: ModelWeights, requested: str = "auto") -> str:
    arch = weights.arch
    dtype = resolve_dtype(weights.config, None)
    by_reason: dict[str, list[int]] = {}
    for m in arch.moe_layers:
        chosen, why = choose_kernel(arch.experts_module(m.layer), dtype, requested)
        if weights.expert_format is not None:
            _, why = for_stored_format(chosen, why, weights.expert_format, dtype, torch.device("cpu"))
        by_reason.setdefault(why, []).append(m.layer)
    lines = [f"expert kernels on this CPU ({str(dtype).removeprefix('torch.')}, asked for {requested}):"]
    for why, layers in by_reason.items():
        lines.append(f"  layers {_ranges(layers)}: {why}")
    return "\n".join(lines)


def _ranges(layers: list[int]) -> str:
    parts: list[str] = []
    start = prev = layers[0]
    for layer in layers[1:] + [None]:
        if layer is not None and layer == prev + 1:
            prev = layer
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if layer is not None:
            start = prev = layer
    return ", ".join(parts)
