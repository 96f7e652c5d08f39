"""Tensor codec: round trips, and malformed messages rejected before allocation (property-based too)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from remoe.proto import tensor_pb2
from remoe.transport.tensor_codec import DTYPES, TensorDecodeError, decode, encode


@pytest.mark.parametrize("dtype", list(DTYPES.values()))
def test_round_trip_is_bit_exact(dtype):
    t = (torch.randn(3, 5) * 100).to(dtype)
    back = decode(encode(t))
    assert back.dtype == dtype and back.shape == t.shape
    assert torch.equal(back.view(torch.uint8), t.contiguous().view(torch.uint8))


def test_non_contiguous_and_empty_tensors():
    t = torch.arange(12.0).view(3, 4).t()
    assert torch.equal(decode(encode(t)), t)
    assert decode(encode(torch.zeros(0, 7))).shape == (0, 7)


@pytest.mark.parametrize(
    "msg, message",
    [
        (tensor_pb2.Tensor(dtype="float64", shape=[1], data=b"\0" * 8), "unknown dtype"),
        (tensor_pb2.Tensor(dtype="float32", shape=[2, 2], data=b"\0" * 12), "needs 16"),
        (tensor_pb2.Tensor(dtype="float32", shape=[-1, 4], data=b""), "negative"),
        (tensor_pb2.Tensor(dtype="float32", shape=[1, 1, 1, 1, 1], data=b"\0" * 4), "rank 5"),
        (tensor_pb2.Tensor(dtype="float32", shape=[1 << 20, 1 << 20], data=b""), "exceeds the limit"),
    ],
)
def test_malformed_messages_are_named(msg, message):
    with pytest.raises(TensorDecodeError, match=message):
        decode(msg)


def test_expected_dtype_and_rank_are_enforced():
    msg = encode(torch.zeros(2, 3))
    with pytest.raises(TensorDecodeError, match="where int64 is expected"):
        decode(msg, "top_k_index", dtype="int64")
    with pytest.raises(TensorDecodeError, match="rank 2"):
        decode(msg, rank=3)


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(list(DTYPES)),
    shape=st.lists(st.integers(min_value=-3, max_value=1 << 40), max_size=6),
    data=st.binary(max_size=256),
)
def test_any_message_decodes_consistently_or_fails_cleanly(dtype, shape, data):
    msg = tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)
    try:
        t = decode(msg, max_bytes=4096)
    except TensorDecodeError:
        return
    assert list(t.shape) == shape
    assert t.numel() * t.element_size() == len(data) == math.prod(shape) * t.element_size()
