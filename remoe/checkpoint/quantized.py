"""Routed experts stored at fewer bytes than the checkpoint's: `remoe split --expert-dtype {bf16,int8,int4}`.

Weight-only, per expert matrix W [N, K] (N output rows, K input columns), in a split's expert shards as plain
safetensors under the matrix's key plus a suffix:
- int8, symmetric per output row: `KEY.qweight` int8 [N, K], `KEY.scale` float32 [N]; w = q * s.
- int4, asymmetric per row and group of G input columns: `KEY.qweight` uint8 [N, K/2] (column 2c in the low
  nibble, 2c + 1 in the high one), `KEY.scale` and `KEY.min` float16 [N, K/G]; w = q * s + m, q in 0..15.
- bf16: the matrix itself in bfloat16 under KEY (a cast, no scales).
Quantized weights are not exact: only what the user asks for, and said wherever the split is served.

torch only (a lean function reads these without transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from remoe.errors import CheckpointError

INT8, INT4, BF16 = "int8", "int4", "bfloat16"
FORMATS = (BF16, INT8, INT4)
EXPERT_DTYPES = {"same": None, "bf16": BF16, "int8": INT8, "int4": INT4}  # --expert-dtype -> stored format
DEFAULT_GROUP_SIZE = 128
_INT4_LEVELS = 15
_INT8_LEVELS = 127


@dataclass(slots=True)
class ExpertFormat:
    """How a split stores its routed experts when not as the checkpoint does (recorded in manifest.json)."""

    dtype: str  # one of FORMATS
    source_dtype: str  # the checkpoint's expert dtype, e.g. "float32"
    group_size: int | None = None  # int4: input columns per scale (a matrix with fewer columns uses all of them)

    def __post_init__(self) -> None:
        if self.dtype not in FORMATS:
            raise CheckpointError(f"expert format {self.dtype!r} is not one of {', '.join(FORMATS)}")
        if self.dtype == INT4 and (not isinstance(self.group_size, int) or self.group_size < 2 or self.group_size % 2):
            raise CheckpointError(f"int4 experts need an even group size of at least 2, not {self.group_size!r}")

    @property
    def quantized(self) -> bool:
        return self.dtype in (INT8, INT4)

    def label(self) -> str:
        """E.g. "int4 (group 128; quantized from float32, not exact)" for banners, inspect and usage."""
        if self.dtype == INT4:
            return f"int4 (group {self.group_size}; quantized from {self.source_dtype}, not exact)"
        if self.dtype == INT8:
            return f"int8 (per channel; quantized from {self.source_dtype}, not exact)"
        return f"bfloat16 (cast from {self.source_dtype}, not exact)"


def int4_group(columns: int, group_size: int) -> int:
    """The group a matrix of `columns` input columns uses: group_size, or all columns where fewer."""
    group = min(group_size, columns)
    if columns % group or group % 2:
        raise CheckpointError(
            f"int4 with group size {group_size}: a matrix with {columns} input columns does not divide into "
            "even groups (choose a --group-size that divides every expert matrix's input size)"
        )
    return group


@dataclass(frozen=True, slots=True)
class QuantizedWeight:
    """One expert matrix W [N, K], weight-only quantized (see the module docstring for the layouts)."""

    dtype: str  # INT8 | INT4
    qweight: torch.Tensor  # int8 [N, K] | uint8 [N, K/2]
    scale: torch.Tensor  # float32 [N] | float16 [N, K/G]
    min: torch.Tensor | None = None  # int4: float16 [N, K/G]

    @property
    def shape(self) -> tuple[int, int]:
        n, k = self.qweight.shape
        return (n, k * 2) if self.dtype == INT4 else (n, k)

    @property
    def group(self) -> int:
        return self.shape[1] // self.scale.shape[1] if self.dtype == INT4 else self.shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        parts = {"qweight": self.qweight, "scale": self.scale}
        if self.min is not None:
            parts["min"] = self.min
        return parts

    def levels(self) -> torch.Tensor:
        """q as float32 [N, K]: int8 values, or int4's 0..15 with the nibbles in column order."""
        if self.dtype == INT8:
            return self.qweight.float()
        q = self.qweight
        return torch.stack([q & 15, q >> 4], dim=-1).reshape(q.shape[0], -1).float()

    def dequantize(self) -> torch.Tensor:
        """W as float32 [N, K]: what the quantized kernels compute with, exactly."""
        q = self.levels()
        if self.dtype == INT8:
            return q * self.scale[:, None]
        g = self.group
        return q * self.scale.float().repeat_interleave(g, dim=1) + self.min.float().repeat_interleave(g, dim=1)


def quantize(weight: torch.Tensor, dtype: str, group_size: int = DEFAULT_GROUP_SIZE) -> QuantizedWeight:
    """W [N, K] (any float dtype) -> its int8 or int4 form; rounding to the nearest level, computed in float32
    against the scales as stored (so int4's float16 scale and minimum are the ones the levels were fitted to)."""
    w = weight.float()
    if w.dim() != 2:
        raise CheckpointError(f"only expert matrices quantize; got a tensor of shape {list(weight.shape)}")
    if dtype == INT8:
        scale = (w.abs().amax(dim=1) / _INT8_LEVELS).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round(w / scale[:, None]).clamp(-_INT8_LEVELS, _INT8_LEVELS).to(torch.int8)
        return QuantizedWeight(INT8, q.contiguous(), scale.contiguous())
    if dtype != INT4:
        raise CheckpointError(f"quantize() takes {INT8} or {INT4}, not {dtype!r}")
    n, k = w.shape
    g = int4_group(k, group_size)
    groups = w.reshape(n, k // g, g)
    lo, hi = groups.amin(dim=2), groups.amax(dim=2)
    scale = ((hi - lo) / _INT4_LEVELS).to(torch.float16)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: any scale, q = 0
    low = lo.to(torch.float16)
    q = torch.round((groups - low.float()[..., None]) / scale.float()[..., None]).clamp(0, _INT4_LEVELS)
    q = q.to(torch.uint8).reshape(n, k // 2, 2)
    packed = (q[..., 0] | (q[..., 1] << 4)).contiguous()  # [N, K/2]
    return QuantizedWeight(INT4, packed, scale.contiguous(), low.contiguous())


def stored_tensors(key: str, weight: torch.Tensor | QuantizedWeight) -> dict[str, torch.Tensor]:
    """What a split writes for one expert matrix under `key`."""
    if isinstance(weight, QuantizedWeight):
        return {f"{key}.{part}": t for part, t in weight.tensors().items()}
    return {key: weight.contiguous()}


def convert(weight: torch.Tensor, fmt: ExpertFormat) -> torch.Tensor | QuantizedWeight:
    """One expert matrix as `fmt` stores it (a non-matrix parameter, e.g. a bias, is only cast where bf16)."""
    if fmt.dtype == BF16:
        return weight.to(torch.bfloat16)
    if weight.dim() != 2:
        raise CheckpointError(
            f"--expert-dtype {fmt.dtype} quantizes expert matrices; this experts module has a parameter of shape "
            f"{list(weight.shape)} (choose bf16 or same)"
        )
    return quantize(weight, fmt.dtype, fmt.group_size or DEFAULT_GROUP_SIZE)


def read_stored(
    read: Callable[[str], torch.Tensor], key: str, fmt: ExpertFormat | None
) -> torch.Tensor | QuantizedWeight:
    """One expert matrix back from a split: `read(key)` returns a stored tensor. The parts' dtypes and shapes are
    checked against each other, so a damaged shard is an error naming the key, not a wrong answer."""
    if fmt is None or not fmt.quantized:
        return read(key)
    parts = {"qweight": read(f"{key}.qweight"), "scale": read(f"{key}.scale")}
    if fmt.dtype == INT4:
        parts["min"] = read(f"{key}.min")
    q, scale = parts["qweight"], parts["scale"]
    if fmt.dtype == INT8:
        ok = (
            q.dtype == torch.int8
            and q.dim() == 2
            and scale.dtype == torch.float32
            and tuple(scale.shape) == q.shape[:1]
        )
    else:
        low = parts["min"]
        ok = (
            q.dtype == torch.uint8
            and q.dim() == 2
            and scale.dtype == low.dtype == torch.float16
            and scale.shape == low.shape
            and scale.dim() == 2
            and scale.shape[0] == q.shape[0]
            and scale.shape[1] > 0
            and (2 * q.shape[1]) % scale.shape[1] == 0
        )
    if ok and fmt.dtype == INT4:  # as many groups as the split's group size makes of these columns
        columns = 2 * q.shape[1]
        ok = columns % min(fmt.group_size, columns) == 0 and scale.shape[1] == columns // min(fmt.group_size, columns)
    if not ok:
        shapes = {p: (str(t.dtype).removeprefix("torch."), list(t.shape)) for p, t in parts.items()}
        raise CheckpointError(f"{key}: stored {fmt.dtype} parts do not fit together: {shapes}")
    return QuantizedWeight(fmt.dtype, q, scale, parts.get("min"))
