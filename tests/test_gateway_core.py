"""GatewayCore as a library, without a network: admission, validation, stop strings, a caller leaving. The backbone
is a stand-in that streams given token ids (the gateway's logic around it is what is tested here; the real
backbone behind the real gateway is tested in test_cluster.py and test_openai_api.py)."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import grpc
import pytest

from remoe.gateway.caller import LocalCaller
from remoe.gateway.core import GatewayCore
from remoe.gateway.refused import Refused
from remoe.proto import backbone_pb2, common_pb2, gateway_pb2

TOKENS = list(range(40, 52))


class _Cancelled(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.CANCELLED

    def details(self):
        return "cancelled"


class _Call:
    """A backbone Generate stream: TOKENS, the last with usage; `gate` (an Event) holds it after the first token."""

    def __init__(self, gate: threading.Event | None) -> None:
        self.gate = gate
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        if self.gate is not None:
            self.gate.set()

    def __iter__(self):
        for i, token in enumerate(TOKENS):
            if i == 1 and self.gate is not None:
                self.gate.wait(30)
            if self.cancelled.is_set():
                raise _Cancelled()
            last = i == len(TOKENS) - 1
            usage = common_pb2.Usage(prompt_tokens=3, completion_tokens=len(TOKENS), ttft_s=0.01, tpot_s=0.001)
            yield backbone_pb2.BackboneChunk(
                token_id=token, finish_reason="length" if last else "", usage=usage if last else None
            )


class _Backbone:
    def __init__(self) -> None:
        self.requests: list[backbone_pb2.BackboneGenerateRequest] = []
        self.calls: list[_Call] = []
        self.gate: threading.Event | None = None
        warmed = Future()
        warmed.set_result(backbone_pb2.WarmReply())
        self.Warm = type("Warm", (), {"future": staticmethod(lambda *a, **k: warmed)})()

    def Generate(self, request, timeout=None, metadata=None):
        self.requests.append(request)
        self.calls.append(_Call(self.gate))
        return self.calls[-1]

    def Status(self, request, timeout=None):
        return backbone_pb2.BackboneStatusReply()


@pytest.fixture
def core(tiny_model):
    return GatewayCore(tiny_model("mixtral"), "127.0.0.1:1", max_requests=1, backbone=_Backbone())


def _request(**fields) -> gateway_pb2.GenerateRequest:
    request = gateway_pb2.GenerateRequest(**fields)
    request.sampling.max_new_tokens = len(TOKENS)
    return request


def test_a_request_streams_the_backbone_s_tokens_as_text_with_usage_last(core):
    chunks = list(core.generate(_request(prompt="hello there"), LocalCaller()))
    assert [t for c in chunks for t in c.token_ids] == TOKENS
    assert "".join(c.text_delta for c in chunks) == core.tokenizer.decode(TOKENS)
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == len(TOKENS)
    assert not any(c.HasField("usage") for c in chunks[:-1]) and len({c.request_id for c in chunks}) == 1
    assert list(core.backbone.requests[0].token_ids) == core.tokenizer.encode("hello there")
    assert (core.admission.active, core.admission.served) == (0, 1)


@pytest.mark.parametrize(
    "fields, sampling, message",
    [
        ({}, {}, "give a prompt or token_ids"),
        ({"prompt": ""}, {}, "the prompt is empty"),
        ({"token_ids": gateway_pb2.TokenIds(ids=[1, 10**6])}, {}, "outside [0,"),
        ({"prompt": "hi"}, {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"prompt": "hi", "slo_ttft_s": float("nan")}, {}, "slo_ttft_s must be a finite number"),
    ],
)
def test_bad_requests_are_refused_before_the_backbone_is_asked(core, fields, sampling, message):
    request = _request(**fields)
    for name, value in sampling.items():
        setattr(request.sampling, name, value)
    with pytest.raises(Refused) as refused:
        list(core.generate(request, LocalCaller()))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.message
    assert core.backbone.requests == [] and core.admission.active == 0


def test_beyond_the_limit_a_request_is_refused_at_once_with_a_retry_hint(core):
    core.backbone.gate = threading.Event()
    first = core.generate(_request(prompt="one"), LocalCaller())
    next(first)  # admitted, held by the backbone after its first token
    with pytest.raises(Refused) as refused:
        next(core.generate(_request(prompt="two"), LocalCaller()))
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused.value.retry_after_ms > 0
    assert "limit of 1 requests" in refused.value.message
    core.backbone.gate.set()
    assert len(list(first)) == len(TOKENS) - 1
    core.backbone.gate = None
    assert len(list(core.generate(_request(prompt="three"), LocalCaller()))) == len(TOKENS)
    status = core.status()
    assert (status.served_requests, status.refused_requests, status.active_requests) == (2, 1, 0)


def test_a_caller_that_leaves_cancels_the_backbone_and_frees_its_slot(core):
    core.backbone.gate = threading.Event()
    caller = LocalCaller()
    chunks = core.generate(_request(prompt="bye"), caller)
    next(chunks)  # the backbone holds the stream after this first token
    caller.cancel()  # the client hangs up
    assert list(chunks) == []  # ends quietly: nobody is left to tell
    assert core.backbone.calls[0].cancelled.is_set() and core.admission.active == 0 and core.admission.served == 0


def test_a_stop_string_ends_the_answer_before_it_and_stops_the_backbone(core):
    full = core.tokenizer.decode(TOKENS)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    chunks = list(core.generate(_request(prompt="hi", stop=[stop]), LocalCaller()))
    text = "".join(c.text_delta for c in chunks)
    assert stop not in text and full.startswith(text) and chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == len(chunks) < len(TOKENS)
    assert core.backbone.calls[0].cancelled.is_set()
