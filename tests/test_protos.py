"""The wire contract: generated stubs are fresh; servers answer health checks and reflection."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from remoe.checkpoint.weights import open_weights
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.servicer import ExpertServicer
from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.server.common import Server


@pytest.mark.processes
def test_generated_stubs_match_the_protos():
    out = subprocess.run([sys.executable, "-m", "remoe.proto.generate", "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_server_answers_health_and_lists_its_services_by_reflection(tiny_model):
    server = Server("expert-test", "127.0.0.1", 0, workers=4)
    executor = LocalExpertExecutor(open_weights(tiny_model("mixtral")))
    expert_pb2_grpc.add_ExpertServiceServicer_to_server(ExpertServicer(executor, "expert-test"), server.server)
    server.add(expert_pb2.DESCRIPTOR.services_by_name["ExpertService"].full_name)
    port = server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "remoe.v1.ExpertService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in answer.list_services_response.service}
        assert {"remoe.v1.ExpertService", "grpc.health.v1.Health"} <= names
    finally:
        server.server.stop(0)
