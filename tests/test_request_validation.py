"""Property-based checks of request validation: whatever numbers arrive in a request, the result is a usable
request or a ValueError naming the field — never another exception, never a value that breaks sampling."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from remoe.model.messages import sampling_from_proto
from remoe.proto import common_pb2
from remoe.sdk.client import build_request

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=300, deadline=None)
@given(
    max_new_tokens=st.integers(0, 2**32 - 1),
    temperature=floats,
    top_p=floats,
    seed=st.none() | st.integers(0, 2**64 - 1),
    ignore_eos=st.booleans(),
)
def test_sampling_from_the_wire_is_valid_or_a_named_value_error(max_new_tokens, temperature, top_p, seed, ignore_eos):
    msg = common_pb2.SamplingParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, ignore_eos=ignore_eos
    )
    if seed is not None:
        msg.seed = seed
    try:
        params = sampling_from_proto(msg)
    except ValueError as e:
        assert any(name in str(e) for name in ("max_new_tokens", "temperature", "top_p"))
        return
    assert params.max_new_tokens >= 1
    assert math.isfinite(params.temperature) and params.temperature >= 0
    assert 0 < params.top_p <= 1
    assert params.stop_on_eos is not ignore_eos


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.none() | st.text(max_size=50),
    token_ids=st.none() | st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20),
    stop=st.lists(st.text(max_size=5), max_size=3),
)
def test_the_sdk_builds_a_request_or_says_what_is_wrong(prompt, token_ids, stop):
    try:
        request = build_request(prompt, token_ids, stop=stop, max_new_tokens=4)
    except ValueError as e:
        assert "exactly one of prompt and token_ids" in str(e) and (prompt is None) == (token_ids is None)
        return
    assert request.WhichOneof("input") == ("prompt" if prompt is not None else "token_ids")
    assert list(request.stop) == stop
