"""The checks a `remoe.v1.Tensor` message passes before anything is allocated (dtype, rank, shape, byte length,
size limit), without torch: a service that only reads a small numpy array (the scheduler's forecast) decodes it
here and never imports torch (it held ~0.3 GB for it). tensor_codec builds torch tensors on the same checks.
"""

from __future__ import annotations

import math

import numpy as np

from remoe.constants import MAX_TENSOR_BYTES
from remoe.proto import tensor_pb2

ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4}  # wire dtype name -> bytes
MAX_RANK = 4
_NUMPY = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}  # no bfloat16


class TensorDecodeError(ValueError):
    """A Tensor message that does not describe a valid tensor (maps to INVALID_ARGUMENT)."""


def checked(
    msg: tensor_pb2.Tensor,
    what: str = "tensor",
    max_bytes: int = MAX_TENSOR_BYTES,
    dtype: str | tuple[str, ...] | None = None,
    rank: int | None = None,
) -> tuple[tuple[int, ...], bytes]:
    """(shape, data) of a message that passed every check; TensorDecodeError naming `what` otherwise."""
    if msg.dtype not in ITEMSIZE:
        raise TensorDecodeError(f"{what}: unknown dtype {msg.dtype!r} (allowed: {', '.join(ITEMSIZE)})")
    if dtype is not None and msg.dtype not in ((dtype,) if isinstance(dtype, str) else dtype):
        raise TensorDecodeError(f"{what}: dtype {msg.dtype} where {dtype} is expected")
    shape = tuple(msg.shape)
    if len(shape) > MAX_RANK or (rank is not None and len(shape) != rank):
        raise TensorDecodeError(f"{what}: rank {len(shape)} shape {list(shape)} is not allowed")
    if any(d < 0 for d in shape):
        raise TensorDecodeError(f"{what}: negative dimension in shape {list(shape)}")
    expected = math.prod(shape) * ITEMSIZE[msg.dtype]
    if expected > max_bytes:
        raise TensorDecodeError(f"{what}: {expected} bytes exceeds the limit of {max_bytes}")
    data = msg.data  # read once: each read of a bytes field copies it (~60 µs per MB)
    if len(data) != expected:
        raise TensorDecodeError(f"{what}: {len(data)} data bytes, but {msg.dtype} {list(shape)} needs {expected}")
    return shape, data


def decode_numpy(
    msg: tensor_pb2.Tensor, what: str, dtype: str, rank: int | None = None, max_bytes: int = MAX_TENSOR_BYTES
) -> np.ndarray:
    """Check then view `msg` as a read-only numpy array of `dtype` (not bfloat16: numpy has none)."""
    if dtype not in _NUMPY:
        raise ValueError(f"decode_numpy reads {', '.join(_NUMPY)}, not {dtype}")
    shape, data = checked(msg, what, max_bytes, dtype, rank)
    return np.frombuffer(data, dtype=_NUMPY[dtype]).reshape(shape)
