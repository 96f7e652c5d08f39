"""Tensor <-> `remoe.v1.Tensor`: dtype name, shape and raw little-endian bytes; no pickle.

Decoding checks dtype, shape, byte length and the size limit before it allocates anything.
"""

from __future__ import annotations

import sys
import warnings

import torch

from remoe.constants import MAX_TENSOR_BYTES
from remoe.proto import tensor_pb2
from remoe.transport.tensor_wire import ITEMSIZE, MAX_RANK, TensorDecodeError, checked

__all__ = ["DTYPES", "DEFAULT_MAX_BYTES", "MAX_RANK", "TensorDecodeError", "decode", "encode", "wire_name"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
}
_NAMES = {v: k for k, v in DTYPES.items()}
assert all(ITEMSIZE[name] == torch.empty(0, dtype=dtype).element_size() for name, dtype in DTYPES.items())
DEFAULT_MAX_BYTES = MAX_TENSOR_BYTES  # one tensor; gRPC's message limit is set to match

assert sys.byteorder == "little", "the wire format is little-endian and so must this host be"
# Decoded tensors share the message's read-only bytes; nothing writes to them, so torch's warning is noise.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


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
    shape, data = checked(msg, what, max_bytes, dtype, rank)
    if not data:
        return torch.empty(shape, dtype=DTYPES[msg.dtype])
    return torch.frombuffer(data, dtype=DTYPES[msg.dtype]).view(shape)
