"""The expert kernels: each prepares one expert's tensors once (at load) and computes a layer's batch.

Every kernel takes hidden [T, H] and weights [T, K] in the executor's dtype and index [T, K] int64, where -1
marks a slot another destination serves, plus the prepared experts the index names; it returns [T, H] in
the executor's dtype. T = tokens, K = top-k, H = hidden size, I = expert intermediate size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from remoe.checkpoint.quantized import BF16, INT4, INT8, QuantizedWeight
from remoe.experts.kernels import native
from remoe.experts.kernels.family import GatedFamily, gated_math
from remoe.experts.modules import ExpertModuleFactory, run_expert


@dataclass(frozen=True, slots=True)
class GatedWeights:
    """One expert's two matrices in a kernel's layout (anonymous memory, never file-backed pages)."""

    gate_up: torch.Tensor  # [2I, H] or a packed form of it
    down: torch.Tensor  # [H, I] or a packed form of it

    @property
    def nbytes(self) -> int:
        return self.gate_up.nbytes + self.down.nbytes


def _rows_by_expert(experts: dict[int, Any], index: torch.Tensor):
    """(expert, rows [N], slots [N]) for each expert the index names, in ascending expert order (the eager
    module's order, so sums round alike)."""
    for expert in sorted(experts):
        rows, slots = torch.where(index == expert)
        yield expert, rows, slots


def _owned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous, as the kernel reads it. The weights' readers already hand over memory of their own
    (remoe/checkpoint/owned_reads.py: no file-backed pages), so this copies only a non-contiguous view."""
    return t.contiguous()


class ClassKernel:
    """The architecture's own experts class, one module per hosted expert: the reference and the fallback."""

    name = "class"

    def __init__(self, template: nn.Module, implementation: str) -> None:
        self._factory = ExpertModuleFactory(template, implementation)

    def prepare(self, tensors: dict[str, torch.Tensor]) -> tuple[nn.Module, int]:
        owned = {n: _owned(t) for n, t in tensors.items()}
        return self._factory.build(owned), sum(t.nbytes for t in owned.values())

    def compute(self, experts: dict[int, nn.Module], hidden, index, weights) -> torch.Tensor:
        out = torch.zeros_like(hidden)  # [T, H]
        for expert, rows, slots in _rows_by_expert(experts, index):
            out.index_add_(0, rows, run_expert(experts[expert], hidden[rows], weights[rows, slots]))
        return out


class AtenKernel:
    """The gated-MLP family with torch's F.linear on contiguous weights: the eager module's ops, no module."""

    name = "aten"

    def __init__(self, family: GatedFamily) -> None:
        self.family = family

    def prepare(self, tensors: dict[str, torch.Tensor]) -> tuple[GatedWeights, int]:
        w = GatedWeights(_owned(tensors["gate_up_proj"]), _owned(tensors["down_proj"]))
        return w, w.nbytes

    def _expert(self, w: GatedWeights, x: torch.Tensor) -> torch.Tensor:
        return gated_math(w.gate_up, w.down, self.family.act, x)

    def compute(self, experts: dict[int, GatedWeights], hidden, index, weights) -> torch.Tensor:
        out = torch.zeros_like(hidden)  # [T, H]
        for expert, rows, slots in _rows_by_expert(experts, index):
            y = self._expert(experts[expert], hidden[rows]) * weights[rows, slots, None]  # [N, H]
            out.index_add_(0, rows, y)
        return out


class OneDnnKernel(AtenKernel):
    """The gated-MLP family over weights reordered once for oneDNN (torch.ops.mkldnn, float32 or bf16)."""

    name = "onednn"

    def prepare(self, tensors: dict[str, torch.Tensor]) -> tuple[GatedWeights, int]:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        w = GatedWeights(reorder(tensors["gate_up_proj"].contiguous()), reorder(tensors["down_proj"].contiguous()))
        return w, w.nbytes

    def _expert(self, w: GatedWeights, x: torch.Tensor) -> torch.Tensor:
        linear = torch.ops.mkldnn._linear_pointwise
        gate, up = linear(x, w.gate_up, None, "none", [], "").chunk(2, dim=-1)  # [N, I] each
        return linear(self.family.act(gate) * up, w.down, None, "none", [], "")


class NativeKernel:
    """The gated-SiLU family in gated_mlp.c: all of a batch's experts in one call, float32 arithmetic; for
    bf16 weights it rounds where the eager bf16 module stores a result, so it stays as close to the class.

    `stored` names a split's reduced expert format (bfloat16, int8, int4; remoe/checkpoint/quantized.py): the
    weights are packed as stored, never widened, and the arithmetic is float32 (with bf16 rounding only where
    the executor itself runs in bf16)."""

    name = "native"

    def __init__(self, family: GatedFamily, dtype: torch.dtype, stored: str | None = None) -> None:
        self.family = family
        self.dtype = dtype
        self.stored = stored
        types = {
            None: native.WEIGHT_TYPES.get(dtype),
            BF16: native.WEIGHT_TYPES[torch.bfloat16],
            INT8: native.INT8_TYPE,
            INT4: native.INT4_TYPE,
        }
        rounds = dtype == torch.bfloat16 and stored in (None, BF16)
        self.shape = native.GatedShape(family.hidden, family.intermediate, types[stored], rounds)

    def prepare(self, tensors: dict[str, torch.Tensor | QuantizedWeight]) -> tuple[GatedWeights, int]:
        w = GatedWeights(_pack(tensors["gate_up_proj"]), _pack(tensors["down_proj"]))
        return w, w.nbytes

    def compute(self, experts: dict[int, GatedWeights], hidden, index, weights) -> torch.Tensor:
        num_experts = max(experts, default=-1) + 1
        out = native.gated_experts(
            self.shape,
            hidden.float().contiguous(),  # exact: bf16 widens to float32 without rounding
            index.to(torch.int64).contiguous(),
            weights.float().contiguous(),
            {e: w.gate_up for e, w in experts.items()},
            {e: w.down for e, w in experts.items()},
            num_experts,
        )
        return out.to(hidden.dtype)


def _pack(t: torch.Tensor | QuantizedWeight) -> native.PackedMatrix:
    if not isinstance(t, QuantizedWeight):
        return native.pack(t)
    if t.dtype == INT8:
        return native.pack_int8(t.qweight, t.scale)
    return native.pack_int4(t.qweight, t.scale, t.min)


def widen(t: torch.Tensor | QuantizedWeight, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A stored expert tensor as the executor's dtype: int8/int4 dequantized, bf16 cast."""
    full = t.dequantize() if isinstance(t, QuantizedWeight) else t
    return full.to(device=device, dtype=dtype)


class WidenedKernel:
    """Any kernel over a split's reduced experts widened at load to the executor's dtype: where the native kernel
    does not serve (no AVX-512, an activation other than SiLU, an accelerator). Same numbers as the quantized
    kernel up to float32 rounding, but the experts then hold the widened bytes (the budget counts those)."""

    def __init__(self, inner, dtype: torch.dtype, device: torch.device) -> None:
        self.inner = inner
        self.name = inner.name
        self._dtype, self._device = dtype, device

    def prepare(self, tensors: dict[str, torch.Tensor | QuantizedWeight]) -> tuple[Any, int]:
        return self.inner.prepare({n: widen(t, self._dtype, self._device) for n, t in tensors.items()})

    def compute(self, experts: dict[int, Any], hidden, index, weights) -> torch.Tensor:
        return self.inner.compute(experts, hidden, index, weights)


# Input-column groups torch's CPU int4 kernel takes, and the output rows it packs at a time.
TORCH_INT4_GROUPS = (32, 64, 128, 256)
TORCH_INT4_ROWS = 16


@dataclass(frozen=True, slots=True)
class TorchPacked:
    """One quantized matrix in torch's weight-only layout: int8 [N, K] with a scale per row, or int4 packed by
    `_convert_weight_to_int4pack_for_cpu` with [K/G, N, 2] (scale, zero) pairs, both in the activations' dtype."""

    weight: torch.Tensor
    scales: torch.Tensor
    group: int  # int4's input columns per scale; 0 for int8

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.scales.nbytes

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, K] -> [N, rows]."""
        if self.group == 0:
            return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight, self.group, self.scales)


def torch_pack(t: QuantizedWeight, dtype: torch.dtype) -> TorchPacked:
    """The stored matrix as torch's kernels take it. int4: w = q * s + m becomes torch's (q - 8) * s + zero with
    zero = m + 8 s; the scales are rounded to `dtype` (torch's kernels take them in the activations' dtype)."""
    if t.dtype == INT8:
        return TorchPacked(_owned(t.qweight), t.scale.to(dtype).contiguous(), 0)
    levels = t.levels().to(torch.int32)  # [N, K] in 0..15
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.contiguous(), 1)
    scale, low = t.scale.float(), t.min.float()  # [N, K/G]
    pairs = torch.stack([scale, low + 8 * scale], dim=-1).transpose(0, 1)  # [K/G, N, 2]
    return TorchPacked(packed, pairs.to(dtype).contiguous(), t.group)


class TorchQuantizedKernel(AtenKernel):
    """The gated-MLP family over a split's int8/int4 experts with torch's weight-only CPU kernels
    (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`), where the native kernel does not serve
    (no AVX-512): the experts keep their quantized bytes instead of being widened (docs/results/quantized_fallback.md).
    bf16 only: with float32 activations they ran 2x (int8) and 10x (int4) slower than widened float32 F.linear in
    a probe at DeepSeek-V2-Lite's expert shape (AMD EPYC, AVX2, 2026-12-07). Arithmetic in bf16, the scales
    rounded to bf16: within bf16 rounding of the dequantized weights' math, not the float packings' 1e-5."""

    name = "aten-quantized"

    def __init__(self, family: GatedFamily, dtype: torch.dtype) -> None:
        super().__init__(family)
        self.dtype = dtype

    def prepare(self, tensors: dict[str, torch.Tensor | QuantizedWeight]) -> tuple[GatedWeights, int]:
        w = GatedWeights(
            torch_pack(tensors["gate_up_proj"], self.dtype),  # type: ignore[arg-type]
            torch_pack(tensors["down_proj"], self.dtype),  # type: ignore[arg-type]
        )
        return w, w.nbytes

    def _expert(self, w: GatedWeights, x: torch.Tensor) -> torch.Tensor:
        gate, up = w.gate_up.matmul(x).chunk(2, dim=-1)  # [N, I] each
        return w.down.matmul(self.family.act(gate) * up)
