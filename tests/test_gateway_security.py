"""The gateway's front door through real processes: TLS and a bearer token from its environment; health checks
stay open; bad TLS configuration stops the gateway at start with a message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from remoe.cluster import LocalCluster, free_port
from remoe.model.tokenizer import load_tokenizer
from remoe.sdk import Client, Unauthenticated, Unavailable
from remoe.settings import GatewaySettings, env_for
from tests.conftest import PROMPT, reference_generate

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

ARCH = "qwen3_moe"
TOKEN = "s3cret-t0ken"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("tls")
    cert, key = out / "cert.pem", out / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Endpoints:
    grpc: str  # localhost:PORT (the certificate's name)
    https: str  # https://localhost:PORT/v1


def _gateway(tmp_path, model, backbone: str, **settings) -> subprocess.Popen:
    ready = tmp_path / "gateway.port"
    ready.unlink(missing_ok=True)
    settings.setdefault("http_port", free_port())
    env = env_for(GatewaySettings, model=model, backbone=backbone, port=0, ready_file=ready, **settings)
    log = (tmp_path / "gateway.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "remoe.services.gateway"], env={**os.environ, **env}, stdout=log, stderr=log
    )


@pytest.fixture(scope="module")
def secured(tiny_model, certificate, tmp_path_factory):
    """A cluster's backbone behind a second gateway that serves TLS and asks for a token."""
    tmp_path = tmp_path_factory.mktemp("secured")
    cert, key = certificate
    with LocalCluster(tiny_model(ARCH), port=0, expert_services=0, predictor=False, run_dir=tmp_path) as cluster:
        backbone = cluster.by_name("backbone").address
        http_port = free_port()
        gateway = _gateway(
            tmp_path, tiny_model(ARCH), backbone, tls_cert=cert, tls_key=key, auth_token=TOKEN, http_port=http_port
        )
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "gateway.port").is_file():
                assert gateway.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
                time.sleep(0.1)
            yield Endpoints(f"localhost:{(tmp_path / 'gateway.port').read_text()}", f"https://localhost:{http_port}/v1")
        finally:
            gateway.terminate()
            gateway.wait(10)


def test_tls_and_the_right_token_get_exact_tokens(secured, certificate, tiny_model, reference):
    ids = load_tokenizer(tiny_model(ARCH)).encode(PROMPT)
    with Client(secured.grpc, token=TOKEN, root_certificates=certificate[0]) as client:
        assert client.generate(token_ids=ids, max_new_tokens=8).token_ids == reference_generate(reference(ARCH), ids, 8)
        assert client.status().model


@pytest.mark.parametrize("token, message", [(None, "missing bearer token"), ("guess", "wrong bearer token")])
def test_without_the_right_token_calls_are_unauthenticated(secured, certificate, token, message):
    with Client(secured.grpc, token=token, root_certificates=certificate[0]) as client:
        with pytest.raises(Unauthenticated, match=message):
            client.generate(prompt=PROMPT, max_new_tokens=2)
        with pytest.raises(Unauthenticated, match=message):
            client.status()


def test_plaintext_is_refused_and_health_needs_no_token(secured, certificate):
    with Client(secured.grpc, token=TOKEN, timeout=5) as plaintext:
        with pytest.raises(Unavailable):
            plaintext.status(timeout=5)
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate[0].read_bytes())
    with grpc.secure_channel(secured.grpc, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tls_cert": "CERT"}, "tls_cert and tls_key go together"),
        ({"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}, "cannot read /nonexistent/"),
    ],
)
def test_bad_tls_configuration_stops_the_gateway_with_a_message(settings, message, certificate, tiny_model, tmp_path):
    settings = {k: certificate[0] if v == "CERT" else v for k, v in settings.items()}
    gateway = _gateway(tmp_path, tiny_model(ARCH), "127.0.0.1:9", **settings)
    assert gateway.wait(60) != 0
    assert message in (tmp_path / "gateway.log").read_text()


def test_the_http_api_wants_the_token_over_tls_and_health_stays_open(secured, certificate, tiny_model):
    import httpx
    import openai

    model = tiny_model(ARCH).name
    ids = load_tokenizer(tiny_model(ARCH)).encode(PROMPT)
    with httpx.Client(verify=str(certificate[0]), timeout=30) as http:
        for headers, message in (({}, "missing bearer token"), ({"authorization": "Bearer guess"}, "wrong")):
            reply = http.post(f"{secured.https}/completions", json={"model": model, "prompt": "hi"}, headers=headers)
            assert reply.status_code == 401 and message in reply.json()["error"]["message"], reply.text
            assert reply.json()["error"]["code"] == "invalid_api_key"
        assert http.get(secured.https.removesuffix("/v1") + "/health").status_code == 200
        oai = openai.OpenAI(base_url=secured.https, api_key=TOKEN, http_client=http, max_retries=0)
        answer = oai.completions.create(model=model, prompt=ids, max_tokens=8, temperature=0)
        with Client(secured.grpc, token=TOKEN, root_certificates=certificate[0]) as client:
            assert answer.choices[0].text == client.generate(token_ids=ids, max_new_tokens=8).text
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=secured.https, api_key="guess", http_client=http, max_retries=0).models.list()


def test_http_health_is_503_while_the_backbone_is_unreachable(tiny_model, tmp_path):
    import httpx

    http_port = free_port()
    gateway = _gateway(tmp_path, tiny_model(ARCH), "127.0.0.1:9", http_port=http_port)  # nothing listens on 9
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "gateway.port").is_file():
            assert gateway.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        reply = httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=10)
        assert reply.status_code == 503 and "backbone unreachable" in reply.json()["error"]["message"]
    finally:
        gateway.terminate()
        gateway.wait(10)


def test_one_bearer_check_for_both_apis():
    from remoe.server.bearer import bearer_problem

    assert bearer_problem("Bearer s3cret", "s3cret") is None
    assert bearer_problem("bearer  s3cret ", "s3cret") is None  # the scheme's case and stray spaces do not matter
    assert bearer_problem("", "s3cret") == "missing bearer token"
    assert bearer_problem("Basic s3cret", "s3cret") == "missing bearer token"
    assert bearer_problem("Bearer s3cre", "s3cret") == "wrong bearer token"
