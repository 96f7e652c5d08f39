"""SDK behaviour that needs no model: retries on UNAVAILABLE through gRPC's retry policy, typed errors."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from remoe.proto import gateway_pb2, gateway_pb2_grpc
from remoe.sdk import Client, InvalidArgument
from remoe.sdk.client import build_request


class FlakyGateway(gateway_pb2_grpc.GatewayServiceServicer):
    """Answers UNAVAILABLE `failures` times, then OK."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def Status(self, request, context):
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return gateway_pb2.StatusReply(model="m")

    def Generate(self, request, context):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be >= 1")


@pytest.fixture
def flaky():
    servicer = FlakyGateway(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_unavailable_is_retried_by_the_channel(flaky):
    servicer, address = flaky
    assert Client(address).status(timeout=10).model == "m"
    assert servicer.calls == 3


def test_server_errors_become_typed_exceptions(flaky):
    _, address = flaky
    with pytest.raises(InvalidArgument) as err:
        Client(address).generate(prompt="x", max_new_tokens=0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_new_tokens" in err.value.message


def test_request_building_checks_the_input():
    with pytest.raises(ValueError, match="exactly one"):
        build_request("a", [1])
    request = build_request(token_ids=[3, 4], max_new_tokens=5, seed=7, stop=["\n"])
    assert list(request.token_ids.ids) == [3, 4] and request.sampling.seed == 7 and list(request.stop) == ["\n"]
    assert not build_request(prompt="hi").sampling.HasField("seed")
