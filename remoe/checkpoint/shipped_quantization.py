"""Quantized checkpoints as the hub ships them, read as the tensors they stand for.

Two published formats, dequantized on read with the same arithmetic as transformers' own CPU load (which
dequantizes both: `Mxfp4Dequantize`, `Fp8Dequantize`), into the checkpoint's dtype as `from_pretrained(dir)`
holds them:
- "mxfp4" (GPT-OSS): an experts tensor `X` [E, in, out] is stored as `X_blocks` uint8 [E, out, in/32, 16]
  (two e2m1 values a byte, the low nibble first) and `X_scales` uint8 [E, out, in/32] (e8m0: 2^(s - 127) per
  32 inputs); the dequantized tensor is transposed back to [E, in, out].
- "fp8" (DeepSeek-V3, `weight_block_size` [bn, bk]): a `weight` [.., N, K] stored float8_e4m3fn beside
  `weight_scale_inv` float32 [.., ceil(N/bn), ceil(K/bk)], one scale a block; weight = fp8 x scale.
Every other tensor (embeddings, norms, routers, biases) is read as stored. The rest of Remoe then sees an
ordinary checkpoint in that dtype (remoe/checkpoint/weight_map.py maps it, the split writes it, experts load it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from remoe.checkpoint.dtypes import resolve_dtype
from remoe.checkpoint.files import Checkpoint, TensorInfo
from remoe.errors import CheckpointError, UnsupportedArchitectureError

MXFP4, FP8 = "mxfp4", "fp8"
SHIPPED_METHODS = (MXFP4, FP8)
_SAFETENSORS_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
# e2m1 code -> value (transformers.integrations.mxfp4.FP4_VALUES)
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_FP8_STORED = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_MX_BLOCKS, _MX_SCALES = "_blocks", "_scales"
_FP8_SCALE = "_scale_inv"


@dataclass(frozen=True, slots=True)
class ShippedQuantization:
    """A checkpoint's own quantization (its config.json's `quantization_config`)."""

    method: str  # one of SHIPPED_METHODS
    dtype: torch.dtype  # what it dequantizes to: the checkpoint's dtype, as from_pretrained's dtype="auto"
    block: tuple[int, int] | None = None  # fp8: rows x columns a scale covers

    @classmethod
    def from_config(cls, config) -> ShippedQuantization | None:
        raw = getattr(config, "quantization_config", None)
        if raw is None:
            return None
        raw = raw if isinstance(raw, dict) else raw.to_dict()
        method = raw.get("quant_method")
        if method not in SHIPPED_METHODS:
            raise UnsupportedArchitectureError(
                f"{config.model_type}: quantized checkpoints of quant_method {method!r} are not supported; Remoe "
                f"reads {' and '.join(SHIPPED_METHODS)} (GPT-OSS, DeepSeek-V3 layouts) and unquantized checkpoints"
            )
        dtype = resolve_dtype(config, None)
        if method == MXFP4:
            return cls(MXFP4, dtype)
        if raw.get("activation_scheme", "dynamic") != "dynamic":
            raise UnsupportedArchitectureError(
                f"{config.model_type}: fp8 with activation_scheme {raw['activation_scheme']!r} (static activation "
                "scales) is not supported; Remoe reads weight-only block fp8 (activation_scheme dynamic)"
            )
        block = raw.get("weight_block_size")
        valid = isinstance(block, list | tuple) and len(block) == 2
        if not (valid and all(isinstance(b, int) and b > 0 for b in block)):
            raise UnsupportedArchitectureError(
                f"{config.model_type}: fp8 without a weight_block_size [rows, columns] (got {block!r}) is not supported"
            )
        return cls(FP8, dtype, (block[0], block[1]))

    def label(self) -> str:
        """E.g. "fp8 (128x128 blocks), read as bfloat16" for inspect and banners."""
        stored = f"fp8 ({self.block[0]}x{self.block[1]} blocks)" if self.method == FP8 else "mxfp4"
        return f"{stored}, read as {str(self.dtype).removeprefix('torch.')}"


@dataclass(frozen=True, slots=True)
class _Parts:
    """The stored tensors one logical tensor is made from."""

    data: str  # MXFP4 blocks / FP8 weight key
    scale: str


@dataclass
class DequantizingCheckpoint(Checkpoint):
    """A checkpoint whose quantized tensors read as the tensors they stand for (same keys transformers maps);
    `tensors` indexes those, `stored` the files' own tensors."""

    quantization: ShippedQuantization | None = None
    parts: dict[str, _Parts] = field(default_factory=dict)
    stored: dict[str, TensorInfo] = field(default_factory=dict)

    @classmethod
    def wrap(cls, ckpt: Checkpoint, quantization: ShippedQuantization) -> DequantizingCheckpoint:
        stored = ckpt.tensors
        parts = _find_parts(stored, quantization)
        if not parts:
            raise CheckpointError(
                f"{ckpt.path}: config.json declares quant_method {quantization.method!r} but no tensor is stored so "
                "(drop quantization_config from config.json if the weights are unquantized)"
            )
        consumed = {p.data for p in parts.values()} | {p.scale for p in parts.values()}
        tensors = {k: info for k, info in stored.items() if k not in consumed}
        for key, p in parts.items():
            tensors[key] = _logical_info(stored, key, p, quantization)
        return cls(ckpt.path, ckpt.config, tensors, quantization=quantization, parts=parts, stored=stored)

    def _stored_read(self, key: str, index: int | None) -> torch.Tensor:
        # into memory of its own: the stored bytes are dropped once dequantized, and no mapped page stays behind
        return self._read_owned(key, self.stored[key], index)

    def read(self, key: str) -> torch.Tensor:
        p = self.parts.get(key)
        return super().read(key) if p is None else self._dequantize(key, p, None)

    def read_row(self, key: str, index: int) -> torch.Tensor:
        p = self.parts.get(key)
        return super().read_row(key, index) if p is None else self._dequantize(key, p, index)

    def read_owned(self, key: str) -> torch.Tensor:
        p = self.parts.get(key)
        return super().read_owned(key) if p is None else self._dequantize(key, p, None)

    def read_row_owned(self, key: str, index: int) -> torch.Tensor:
        p = self.parts.get(key)
        return super().read_row_owned(key, index) if p is None else self._dequantize(key, p, index)

    def _dequantize(self, key: str, p: _Parts, index: int | None) -> torch.Tensor:
        data, scale = self._stored_read(p.data, index), self._stored_read(p.scale, index)
        q = self.quantization
        assert q is not None
        try:
            if q.method == MXFP4:
                return dequantize_mxfp4(data, scale, q.dtype)
            assert q.block is not None
            return dequantize_block_fp8(data, scale, q.block, q.dtype)
        except RuntimeError as e:
            raise CheckpointError(f"{self.stored[p.data].file}: cannot dequantize {key!r} ({e})") from e


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """blocks uint8 [.., O, G, B], scales uint8 [.., O, G] -> [.., G*2B, O] in `dtype` (transformers'
    `_convert_moe_packed_tensors`: a table lookup in `dtype`, then ldexp by the e8m0 exponent)."""
    lut = torch.tensor(FP4_VALUES, dtype=dtype)
    *prefix, rows, groups, width = blocks.shape
    flat = blocks.reshape(-1, width)
    out = torch.empty(flat.shape[0], 2 * width, dtype=dtype)
    out[:, 0::2] = lut[(flat & 0x0F).to(torch.int)]
    out[:, 1::2] = lut[(flat >> 4).to(torch.int)]
    torch.ldexp(out, scales.to(torch.int32).reshape(-1, 1) - 127, out=out)
    return out.reshape(*prefix, rows, groups * 2 * width).transpose(-1, -2).contiguous()


def dequantize_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """weight fp8 [.., N, K], scale_inv [.., ceil(N/bn), ceil(K/bk)] -> [.., N, K] in `dtype`: the product
    in float32, then cast (transformers' `Fp8Dequantize`; blocks at the edge cover what is left)."""
    rows, cols = weight.shape[-2:]
    scales = scale_inv.to(torch.float32)
    if scale_inv.dtype == torch.uint8:  # e8m0 exponents (ue8m0 scale format)
        scales = (scales - 127.0).exp2()
    expanded = scales.repeat_interleave(block[0], dim=-2)[..., :rows, :]
    expanded = expanded.repeat_interleave(block[1], dim=-1)[..., :cols]
    return (weight.to(torch.float32) * expanded).to(dtype)


def _find_parts(stored: dict[str, TensorInfo], q: ShippedQuantization) -> dict[str, _Parts]:
    parts: dict[str, _Parts] = {}
    for key in stored:
        if q.method == MXFP4 and key.endswith(_MX_BLOCKS):
            logical = key.removesuffix(_MX_BLOCKS)
            scale = logical + _MX_SCALES
        elif q.method == FP8 and key.endswith(".weight") and key + _FP8_SCALE in stored:
            logical, scale = key, key + _FP8_SCALE
        else:
            continue
        if scale not in stored:
            raise CheckpointError(f"{stored[key].file}: {key!r} has no {scale!r} beside it")
        parts[logical] = _Parts(key, scale)
    scales = {p.scale for p in parts.values()}  # once: a DeepSeek-V3 checkpoint has ~90k tensors
    suffix = _MX_SCALES if q.method == MXFP4 else _FP8_SCALE
    orphans = [k for k in stored if k.endswith(suffix) and k not in scales]
    if orphans:
        raise CheckpointError(f"{stored[orphans[0]].file}: scale tensor {orphans[0]!r} has no quantized tensor")
    if q.method == FP8 and any(k.endswith(".activation_scale") or k.endswith(".input_scale") for k in stored):
        raise UnsupportedArchitectureError("fp8 checkpoint with activation scales: static fp8 is not supported")
    return parts


def _logical_info(stored: dict[str, TensorInfo], key: str, p: _Parts, q: ShippedQuantization) -> TensorInfo:
    """The tensor `key` stands for: its shape and dtype once dequantized; checked against its scale's shape."""
    data, scale = stored[p.data], stored[p.scale]

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{data.file}: {p.data!r} {list(data.shape)} and {p.scale!r} {list(scale.shape)}: {why}")

    if q.method == MXFP4:
        if data.dtype != "U8" or scale.dtype != "U8":
            raise bad(f"mxfp4 blocks and scales are uint8, not {data.dtype} and {scale.dtype}")
        if len(data.shape) < 3 or data.shape[:-1] != scale.shape:
            raise bad("blocks must be [.., rows, groups, bytes] over scales [.., rows, groups]")
        *prefix, rows, groups, width = data.shape
        shape = (*prefix, groups * 2 * width, rows)
    else:
        assert q.block is not None
        if data.dtype not in _FP8_STORED:
            raise bad(f"fp8 weights are F8_E4M3 or F8_E5M2, not {data.dtype}")
        if len(data.shape) < 2 or len(scale.shape) != len(data.shape):
            raise bad("a block scale has one entry per block of the weight's last two dims")
        *prefix, rows, cols = data.shape
        grid = (-(-rows // q.block[0]), -(-cols // q.block[1]))
        if tuple(scale.shape) != (*prefix, *grid):
            raise bad(f"{q.block[0]}x{q.block[1]} blocks need scales {[*prefix, *grid]}")
        shape = tuple(data.shape)
    elements = 1
    for d in shape:
        elements *= d
    return TensorInfo(data.file, _SAFETENSORS_NAMES[q.dtype], tuple(shape), elements * q.dtype.itemsize)


def open_dequantizing(ckpt: Checkpoint) -> tuple[Checkpoint, ShippedQuantization | None]:
    """`ckpt` itself where it is not quantized; else a view that reads its quantized tensors dequantized."""
    quantization = ShippedQuantization.from_config(ckpt.config)
    if quantization is None:
        return ckpt, None
    return DequantizingCheckpoint.wrap(ckpt, quantization), quantization
