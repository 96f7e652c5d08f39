"""The experts' math as `remoe split` records it in the manifest, and the kernel a lean function builds from it.

At split time every MoE layer's experts module is inspected with transformers at hand (its gated-MLP family
proven against the class's own eager forward, remoe/experts/kernels/family.py) and its activation checked to be
bit for bit F.silu. A function serving the split then computes with nn.SiLU and the recorded shapes, the same
ops as the class, without importing transformers (about a second of a cold start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from remoe.checkpoint.manifest import GATED_SILU, ExpertsMath
from remoe.experts.kernels.family import GatedFamily, inspect_gated

if TYPE_CHECKING:
    from remoe.checkpoint.architecture import Architecture


def _is_exactly_silu(act: nn.Module) -> bool:
    """Bit for bit F.silu on a grid and on random values (allclose would let a near-SiLU through)."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-20, 20, 4001), torch.randn(4096, generator=g) * 4])
    with torch.inference_mode():
        return all(torch.equal(act(x.to(d)), F.silu(x.to(d))) for d in (torch.float32, torch.bfloat16))


def record_experts_math(arch: Architecture) -> tuple[ExpertsMath | None, str]:
    """The record for the manifest, or None with the reason the experts need their class."""
    shapes: dict[str, tuple[int, ...]] | None = None
    for moe in arch.moe_layers:
        family = inspect_gated(arch.experts_module(moe.layer))
        if isinstance(family, str):
            return None, f"layer {moe.layer}: {family}"
        if not _is_exactly_silu(family.act):
            return None, f"layer {moe.layer}: activation {type(family.act).__name__} is not exactly SiLU"
        if shapes is not None and moe.param_shapes != shapes:
            return None, f"layer {moe.layer}: expert shapes {moe.param_shapes} differ from other layers' {shapes}"
        shapes = moe.param_shapes
    if shapes is None:
        return None, "no MoE layers"
    return ExpertsMath(GATED_SILU, {n: list(s) for n, s in shapes.items()}), "gated SiLU in every MoE layer"


def recorded_family(math: ExpertsMath) -> GatedFamily:
    if math.family != GATED_SILU:
        raise ValueError(f"unknown experts math {math.family!r} in the manifest (this remoe knows {GATED_SILU!r})")
    two_i, hidden = math.param_shapes["gate_up_proj"]
    return GatedFamily(hidden, two_i // 2, nn.SiLU(), act_is_silu=True)
