"""Admission control through real processes: beyond its limit the gateway refuses at once, with a retry hint,
and serves again when a slot frees."""

from __future__ import annotations

import threading
import time

import pytest

from remoe.cluster import LocalCluster
from remoe.model.tokenizer import load_tokenizer
from remoe.sdk import Client, ResourceExhausted
from tests.conftest import PROMPT, reference_generate

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI


@pytest.fixture(scope="module")
def one_slot_cluster(tiny_model, tmp_path_factory):
    env = {"REMOE_GATEWAY_MAX_REQUESTS": "1"}
    run_dir = tmp_path_factory.mktemp("one-slot")
    with LocalCluster(
        tiny_model("qwen3_moe"), port=0, expert_services=0, predictor=False, run_dir=run_dir, env=env
    ) as c:
        yield c


def test_beyond_the_limit_a_request_is_refused_at_once_with_a_retry_hint(one_slot_cluster, tiny_model, reference):
    ids = load_tokenizer(tiny_model("qwen3_moe")).encode(PROMPT)
    expected = reference_generate(reference("qwen3_moe"), ids, 160)
    client = Client(one_slot_cluster.address)
    first_tokens = threading.Event()
    got: list[int] = []

    def long_request() -> None:
        for chunk in client.stream(token_ids=ids, max_new_tokens=160):
            got.extend(chunk.token_ids)
            first_tokens.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    assert first_tokens.wait(60)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as refused:
        client.generate(token_ids=ids, max_new_tokens=4)
    assert time.monotonic() - started < 2.0, "refused at once, not queued"
    assert "REMOE_GATEWAY_MAX_REQUESTS" in refused.value.message and "limit of 1" in refused.value.message
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
    worker.join(120)
    assert got == expected, "the admitted request is unaffected"
    assert client.generate(token_ids=ids, max_new_tokens=4).token_ids == expected[:4], "a freed slot serves again"
    status = client.status()
    assert (status.refused_requests, status.max_requests, status.active_requests) == (1, 1, 0)


def test_the_http_api_answers_429_with_retry_after_at_the_limit(one_slot_cluster, tiny_model):
    import httpx
    import openai

    client = Client(one_slot_cluster.address)
    first_tokens = threading.Event()

    def long_request() -> None:
        for _ in client.stream(prompt=PROMPT, max_new_tokens=160):
            first_tokens.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    assert first_tokens.wait(60)
    model = tiny_model("qwen3_moe").name
    reply = httpx.post(
        f"{one_slot_cluster.http_url}/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 2}, timeout=10
    )
    assert reply.status_code == 429, reply.text
    assert reply.json()["error"]["type"] == "rate_limit_error" and "limit of 1" in reply.json()["error"]["message"]
    assert int(reply.headers["retry-after"]) >= 1 and int(reply.headers["retry-after-ms"]) > 0
    oai = openai.OpenAI(base_url=one_slot_cluster.http_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        oai.completions.create(model=model, prompt=PROMPT, max_tokens=2)
    worker.join(120)
    assert oai.completions.create(model=model, prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2
