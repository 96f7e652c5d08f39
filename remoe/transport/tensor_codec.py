"""Tensor <-> `remoe.v1.Tensor`: dtype name, shape and raw little-endian bytes; no pickle.

Decoding checks dtype, shape, byte length and the size limit before it allocates anything.
"""

from __future__ import annotations

import math
import sys
import warnings

import torch

from remoe.proto import tensor_pb2

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
}
_NAMES = {v: k for k, v in DTYPES.items()}
_ITEMSIZE = {name: torch.empty(0, dtype=dtype).element_size() for name, dtype in DTYPES.items()}
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # one tensor; gRPC's message limit is set to match
MAX_RANK = 4

assert sys.byteorder == "little", "the wire format is little-endian and so must this host be"
# Decoded tensors share the message's read-only bytes; nothing writes to them, so torch's warning is noise.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


class TensorDecodeError(ValueError):
    """A Tensor message that does not describe a valid tensor (maps to INVALID_ARGUMENT)."""


def wire_name(dtype: torch.dtype) -> str:
    name = _NAMES.get(dtype)
    if name is None:
        raise TypeError(f"dtype {dtype} cannot go on the wire (allowed: {', '.join(DTYPES)})")
    return name


def encode(tensor: torch.Tensor) -> tensor_pb2.Tensor:
    t = tensor.detach().to("cpu").contiguous()
    name = wire_name(t.dtype)
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
    return tensor_pb2.Tensor(dtype=name, shape=list(t.shape), data=raw.numpy().tobytes())


def decode(
    msg: tensor_pb2.Tensor,
    what: str = "tensor",
    max_bytes: int = DEFAULT_MAX_BYTES,
    dtype: str | tuple[str, ...] | None = None,
    rank: int | None = None,
) -> torch.Tensor:
    """Check then view `msg` as a tensor (read-only; it shares the message's bytes)."""
    if msg.dtype not in DTYPES:
        raise TensorDecodeError(f"{what}: unknown dtype {msg.dtype!r} (allowed: {', '.join(DTYPES)})")
    if dtype is not None and msg.dtype not in ((dtype,) if isinstance(dtype, str) else dtype):
        raise TensorDecodeError(f"{what}: dtype {msg.dtype} where {dtype} is expected")
    shape = tuple(msg.shape)
    if len(shape) > MAX_RANK or (rank is not None and len(shape) != rank):
        raise TensorDecodeError(f"{what}: rank {len(shape)} shape {list(shape)} is not allowed")
    if any(d < 0 for d in shape):
        raise TensorDecodeError(f"{what}: negative dimension in shape {list(shape)}")
    expected = math.prod(shape) * _ITEMSIZE[msg.dtype]
    if expected > max_bytes:
        raise TensorDecodeError(f"{what}: {expected} bytes exceeds the limit of {max_bytes}")
    data = msg.data  # read once: each read of a bytes field copies it (~60 µs per MB)
    if len(data) != expected:
        raise TensorDecodeError(f"{what}: {len(data)} data bytes, but {msg.dtype} {list(shape)} needs {expected}")
    if expected == 0:
        return torch.empty(shape, dtype=DTYPES[msg.dtype])
    return torch.frombuffer(data, dtype=DTYPES[msg.dtype]).view(shape)
