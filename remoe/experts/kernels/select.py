"""Choosing a layer's expert kernel: what was asked for, what the module's math allows, what builds here."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import torch
from torch import nn

from remoe.checkpoint.quantized import INT4, ExpertFormat, int4_group
from remoe.experts.kernels import native
from remoe.experts.kernels.backends import (
    TORCH_INT4_GROUPS,
    TORCH_INT4_ROWS,
    AtenKernel,
    ClassKernel,
    NativeKernel,
    OneDnnKernel,
    TorchQuantizedKernel,
    WidenedKernel,
)
from remoe.experts.kernels.family import GatedFamily, inspect_gated

log = logging.getLogger(__name__)

KERNELS = ("auto", "native", "aten", "onednn", "class")
_NATIVE_DTYPES = (torch.float32, torch.bfloat16)


class ExpertKernel(Protocol):
    name: str

    def prepare(self, tensors: dict[str, torch.Tensor]) -> tuple[Any, int]:
        """One expert's tensors (per-expert shapes) -> (what compute() takes for it, bytes it holds)."""
        ...

    def compute(
        self, experts: dict[int, Any], hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """hidden [T, H], index [T, K] (-1: elsewhere), weights [T, K] -> [T, H]; `experts` has every id in index."""
        ...


def choose_kernel(
    template: nn.Module, dtype: torch.dtype, requested: str = "auto", implementation: str = "eager"
) -> tuple[ExpertKernel, str]:
    """The kernel for one layer's experts module, and a sentence saying why (for `remoe inspect` and logs).

    An explicit request the layer cannot take (an uncovered module, no compiler) falls back, with the reason."""
    if requested not in KERNELS:
        raise ValueError(f"expert kernel must be one of {', '.join(KERNELS)}; got {requested!r}")
    if requested == "class":
        return ClassKernel(template, implementation), f"class {type(template).__name__} (asked for)"
    family = inspect_gated(template)
    if isinstance(family, str):
        return ClassKernel(template, implementation), f"class {type(template).__name__} ({family})"
    return kernel_for_family(family, dtype, requested)


def kernel_for_family(family: GatedFamily, dtype: torch.dtype, requested: str = "auto") -> tuple[ExpertKernel, str]:
    """The fastest gated-MLP kernel that takes `requested` (not "class") here, and why."""
    if requested in ("auto", "native"):
        why = _native_refusal(family, dtype)
        if why is None:
            return NativeKernel(family, dtype), f"native gated-SiLU ({_dtype_name(dtype)} weights packed)"
        if requested == "native":
            log.warning("native expert kernel not used: %s", why)
        return AtenKernel(family), f"aten gated-MLP ({why})"
    if requested == "onednn":
        if dtype in _NATIVE_DTYPES and torch.backends.mkldnn.is_available():
            return OneDnnKernel(family), f"onednn gated-MLP ({_dtype_name(dtype)} weights reordered)"
        log.warning("onednn expert kernel not used: oneDNN does not take %s here", dtype)
    return AtenKernel(family), "aten gated-MLP"


def for_stored_format(
    chosen: ExpertKernel, why: str, fmt: ExpertFormat, dtype: torch.dtype, device: torch.device
) -> tuple[ExpertKernel, str]:
    """The layer's kernel for a split whose experts are stored as `fmt`: the native kernel computes on them as
    stored; without it, bf16 int8/int4 experts go to torch's weight-only kernels, also as stored; any other
    kernel gets them widened to `dtype` at load (the reason says so)."""
    if isinstance(chosen, NativeKernel):
        kernel = NativeKernel(chosen.family, dtype, fmt.dtype)
        return kernel, f"native gated-SiLU ({fmt.label()}, packed as stored{_vnni_note(chosen.family, fmt)})"
    if isinstance(chosen, AtenKernel) and _torch_quantized_fits(chosen.family, fmt, dtype, device):
        return TorchQuantizedKernel(chosen.family, dtype), (
            f"{why}; experts {fmt.label()} kept as stored, torch's weight-only {fmt.dtype} kernel in bf16"
        )
    return WidenedKernel(chosen, dtype, device), f"{why}; experts {fmt.label()} widened to {_dtype_name(dtype)} at load"


def _torch_quantized_fits(family: GatedFamily, fmt: ExpertFormat, dtype: torch.dtype, device: torch.device) -> bool:
    """torch's int8/int4 CPU kernels for this layer: bf16 activations (in float32 they are slower than widening:
    TorchQuantizedKernel says by how much); int4 needs a group of 32-256 columns and output rows in blocks of 16 for
    both matrices (gate_up [2I, H], down [H, I])."""
    if not fmt.quantized or dtype != torch.bfloat16 or device.type != "cpu":
        return False
    if fmt.dtype != INT4:
        return True
    matrices = ((2 * family.intermediate, family.hidden), (family.hidden, family.intermediate))  # (rows, columns)
    return all(
        rows % TORCH_INT4_ROWS == 0 and int4_group(columns, fmt.group_size or columns) in TORCH_INT4_GROUPS
        for rows, columns in matrices
    )


def _vnni_note(family: GatedFamily, fmt: ExpertFormat) -> str:
    """Whether the layer's matrices take the VNNI kernels (and so int8 activations), for inspect and the logs."""
    if not fmt.quantized:
        return ""
    fits = [
        native.vnni_fits(k, None if fmt.group_size is None else min(fmt.group_size, k))
        for k in (family.hidden, family.intermediate)
    ]
    if all(fits):
        return "; AVX512-VNNI with activations quantized to int8 per 32 columns"
    return "; float32 arithmetic" + ("" if not any(fits) else " for the matrices VNNI does not fit")


def _native_refusal(family: GatedFamily, dtype: torch.dtype) -> str | None:
    if not family.act_is_silu:
        return f"activation {type(family.act).__name__} is not SiLU"
    if dtype not in _NATIVE_DTYPES:
        return f"the native kernel takes float32 or bfloat16 weights, not {_dtype_name(dtype)}"
    return native.unavailable_reason()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
