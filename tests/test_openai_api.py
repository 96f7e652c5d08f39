"""The gateway's OpenAI-compatible HTTP API and every service's /metrics, through real processes: the official
`openai` client against a local cluster, answers checked against the gRPC SDK and transformers."""

from __future__ import annotations

import json
import socket
import time

import grpc
import httpx
import openai
import pytest

from remoe.cluster import LocalCluster
from remoe.model.tokenizer import load_tokenizer
from remoe.proto import common_pb2, gateway_pb2, gateway_pb2_grpc
from remoe.sdk import Client
from tests.conftest import PROMPT, reference_generate, scrape, wait_until

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

ARCH = "mixtral"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain a hash table."}]


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    with LocalCluster(
        tiny_model(ARCH), port=0, expert_services=1, predictor=False, run_dir=tmp_path_factory.mktemp("http")
    ) as c:
        yield c


@pytest.fixture(scope="module")
def model_name(tiny_model) -> str:
    return tiny_model(ARCH).name


@pytest.fixture(scope="module")
def oai(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.http_url, api_key="unused", max_retries=0, timeout=60)


def _root(cluster: LocalCluster) -> str:
    return cluster.http_url.removesuffix("/v1")


def test_greedy_completion_equals_the_sdk_and_transformers(cluster, oai, model_name, tiny_model, reference):
    ids = load_tokenizer(tiny_model(ARCH)).encode(PROMPT)
    expected = reference_generate(reference(ARCH), ids, 12)
    sdk = Client(cluster.address).generate(prompt=PROMPT, max_new_tokens=12)
    assert sdk.token_ids == expected
    answer = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    assert answer.choices[0].text == sdk.text
    assert answer.choices[0].finish_reason == sdk.finish_reason
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(ids), 12)
    assert answer.object == "text_completion" and answer.model == model_name
    by_ids = oai.completions.create(model=model_name, prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == sdk.text, "a prompt given as token ids"


def test_a_streamed_completion_is_the_same_text_with_usage_at_the_end(oai, model_name):
    whole = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=16, temperature=0)
    chunks = list(
        oai.completions.create(
            model=model_name,
            prompt=PROMPT,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) > 3, "streamed token by token, not in one piece"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_renders_the_model_template_and_matches_transformers(cluster, oai, model_name, tiny_model, reference):
    tokenizer = load_tokenizer(tiny_model(ARCH))
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = reference_generate(reference(ARCH), ids, 10)
    sdk = Client(cluster.address).generate(token_ids=ids, max_new_tokens=10)
    assert sdk.token_ids == expected
    answer = oai.chat.completions.create(model=model_name, messages=CHAT, max_tokens=10, temperature=0)
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == sdk.text
    assert answer.usage.prompt_tokens == len(ids)
    stream = list(
        oai.chat.completions.create(
            model=model_name, messages=CHAT, max_completion_tokens=10, temperature=0, stream=True
        )
    )
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == sdk.text
    assert stream[-1].choices[0].finish_reason == "length"


def test_a_chat_without_max_tokens_stops_at_the_context_instead_of_refusing(oai, model_name):
    long = [{"role": "user", "content": "the " * 900}]  # ~940 tokens of a 1024-token context
    answer = oai.chat.completions.create(model=model_name, messages=long, temperature=0)
    assert 900 < answer.usage.prompt_tokens < 1024
    assert answer.usage.prompt_tokens + answer.usage.completion_tokens <= 1024


def test_stop_strings_and_seeds_behave_as_in_the_sdk(cluster, oai, model_name):
    sdk = Client(cluster.address)
    full = sdk.generate(prompt=PROMPT, max_new_tokens=24).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    stopped = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == sdk.generate(prompt=PROMPT, max_new_tokens=24, stop=[stop]).text
    assert stop not in stopped.choices[0].text
    sampled = [
        oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7).choices[0].text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] == sdk.generate(prompt=PROMPT, max_new_tokens=12, temperature=1.0, seed=7).text


def test_models_and_health(cluster, oai, model_name):
    assert [m.id for m in oai.models.list().data] == [model_name]
    assert oai.models.retrieve(model_name).owned_by == "remoe"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-17")
    health = httpx.get(f"{_root(cluster)}/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


# name -> (path, JSON body or raw text, HTTP status, words the message must hold, error param)
BAD = {
    "no-prompt": ("/v1/completions", {"model": "M"}, 400, "prompt: field required", "prompt"),
    "no-model": ("/v1/completions", {"prompt": "hi"}, 400, "model: field required", "model"),
    "max-tokens-a-string": ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": "5"}, 400, "integer", None),
    "temperature-too-high": ("/v1/completions", {"model": "M", "prompt": "hi", "temperature": 3}, 400, "2", None),
    "too-many-choices": ("/v1/completions", {"model": "M", "prompt": "hi", "n": 17}, 400, "16", "n"),
    "too-many-prompts": ("/v1/completions", {"model": "M", "prompt": ["a"] * 33}, 400, "limit of 32", "prompt"),
    "choices-times-prompts": ("/v1/completions", {"model": "M", "prompt": ["a"] * 3, "n": 11}, 400, "x n=11", "prompt"),
    "an-empty-prompt-of-two": ("/v1/completions", {"model": "M", "prompt": ["a", ""]}, 400, "prompt 1 is empty", None),
    "logprobs-too-many": ("/v1/completions", {"model": "M", "prompt": "hi", "logprobs": 21}, 400, "20", "logprobs"),
    "echo-with-stream": (
        "/v1/completions",
        {"model": "M", "prompt": "hi", "echo": True, "stream": True},
        400,
        "echo is not supported with stream",
        None,
    ),
    "score-without-echo": ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": 0}, 400, "echo", None),
    "n-with-stream": ("/v1/completions", {"model": "M", "prompt": "hi", "n": 2, "stream": True}, 400, "n > 1", None),
    "empty-prompt": ("/v1/completions", {"model": "M", "prompt": ""}, 400, "empty", "prompt"),
    "unknown-model": ("/v1/completions", {"model": "gpt-17", "prompt": "hi"}, 404, "`gpt-17` does not exist", "model"),
    "too-many-tokens": ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": 100000}, 400, "limit", None),
    "past-the-context": ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": 2000}, 400, "context", None),
    "token-id-outside-vocab": ("/v1/completions", {"model": "M", "prompt": [10**6]}, 400, "outside", None),
    "usage-without-stream": (
        "/v1/completions",
        {"model": "M", "prompt": "hi", "stream_options": {"include_usage": True}},
        400,
        "only allowed when stream",
        None,
    ),
    "not-json": ("/v1/completions", "{not json", 400, "not valid json", None),
    "chat-no-messages": ("/v1/chat/completions", {"model": "M", "messages": []}, 400, "messages", "messages"),
    "chat-bad-role": (
        "/v1/chat/completions",
        {"model": "M", "messages": [{"role": "wizard", "content": "hi"}]},
        400,
        "role",
        None,
    ),
    "chat-tools": (
        "/v1/chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
        400,
        "tools are not supported",
        None,
    ),
    "chat-top-logprobs-alone": (
        "/v1/chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        400,
        "needs logprobs",
        None,
    ),
    "chat-two-choices": (
        "/v1/chat/completions",
        {"model": "M", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        400,
        "one chat request per choice",
        None,
    ),
    "detokenize-outside-vocab": ("/detokenize", {"tokens": [10**6]}, 400, "outside the vocabulary", "tokens"),
    "tokenize-nothing": ("/tokenize", {"model": "M"}, 400, "prompt or messages", "prompt"),
    "no-such-route": ("/v1/embeddings", {"model": "M", "input": "hi"}, 404, "not found", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_openai_style_errors(case, cluster, model_name):
    path, body, status, words, param = BAD[case]
    url = _root(cluster) + path
    if isinstance(body, dict):
        body = {k: (model_name if v == "M" else v) for k, v in body.items()}
        reply = httpx.post(url, json=body, timeout=30)
    else:
        reply = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert words.lower() in error["message"].lower(), error
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]
    if param is not None:
        assert error["param"] == param


def test_the_openai_client_raises_its_own_errors(oai, model_name):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        oai.completions.create(model="gpt-17", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="limit"):
        oai.completions.create(model=model_name, prompt="hi", max_tokens=100000, stream=True)


def test_metrics_parse_and_move_as_requests_are_served(cluster, oai, model_name):
    gateway_url = f"{_root(cluster)}/metrics"
    expert_url = cluster.by_name("expert-0").metrics_url
    backbone_url = cluster.by_name("backbone").metrics_url
    before = {url: scrape(url) for url in (gateway_url, expert_url, backbone_url)}
    oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=6, temperature=0)
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-17", prompt="hi")
    after = {url: scrape(url) for url in (gateway_url, expert_url, backbone_url)}

    def moved(url: str, name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[url][key] - before[url].get(key, 0.0)

    assert moved(gateway_url, "remoe_gateway_requests_total", code="OK") == 1
    assert moved(gateway_url, "remoe_gateway_completion_tokens_total") == 6
    assert moved(gateway_url, "remoe_gateway_ttft_seconds_count") == 1
    assert moved(gateway_url, "remoe_gateway_tpot_seconds_count") == 1
    assert moved(gateway_url, "remoe_gateway_request_cost_dollars_count") == 1
    assert moved(gateway_url, "remoe_gateway_request_cost_dollars_sum") > 0
    assert moved(gateway_url, "remoe_gateway_forecasts_total", source="none") == 1
    assert moved(gateway_url, "remoe_http_requests_total", route="/v1/completions", status="404") == 1
    assert after[gateway_url][("remoe_gateway_active_requests", ())] == 0
    assert moved(expert_url, "remoe_expert_cache_hits_total", service="expert-0") > 0
    assert moved(expert_url, "remoe_expert_batches_total", service="expert-0") > 0
    assert after[expert_url][("remoe_expert_resident_bytes", (("service", "expert-0"),))] > 0
    assert moved(backbone_url, "remoe_backbone_requests_total") == 1


def test_a_client_that_leaves_mid_stream_frees_its_slot(cluster, oai, model_name):
    url = f"{_root(cluster)}/metrics"
    before = scrape(url).get(("remoe_gateway_requests_total", (("code", "CANCELLED"),)), 0.0)
    stream = oai.completions.create(model=model_name, prompt=PROMPT, max_tokens=400, temperature=0, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(url)
        cancelled = samples.get(("remoe_gateway_requests_total", (("code", "CANCELLED"),)), 0.0) - before
        if cancelled == 1 and samples[("remoe_gateway_active_requests", ())] == 0:
            break
        assert time.monotonic() < deadline, (
            f"cancelled {cancelled}, active {samples[('remoe_gateway_active_requests', ())]}"
        )
        time.sleep(0.2)
    assert Client(cluster.address).status().backbone.active_requests == 0, "the backbone stopped generating too"


def test_a_client_that_hangs_up_before_a_whole_answer_cancels_it(cluster, model_name):
    url = f"{_root(cluster)}/metrics"
    key = ("remoe_gateway_requests_total", (("code", "CANCELLED"),))
    before = scrape(url).get(key, 0.0)
    body = json.dumps({"model": model_name, "prompt": PROMPT, "max_tokens": 900, "temperature": 0}).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    active = ("remoe_gateway_active_requests", ())
    with socket.create_connection(("127.0.0.1", cluster.http_port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        wait_until(lambda: scrape(url)[active] >= 1, 10, "the request being served")
    # Hung up while it is served: the gateway counts it CANCELLED (one served to its end would count OK).
    deadline = time.monotonic() + 10
    while scrape(url).get(key, 0.0) - before < 1 or scrape(url)[active] != 0:
        assert time.monotonic() < deadline, "the abandoned request kept running"
        time.sleep(0.2)


def test_a_grpc_call_without_a_deadline_is_served(cluster, tiny_model, reference):
    """grpc reports a client without a deadline as ~forever remaining; timers built from it must not overflow."""
    ids = load_tokenizer(tiny_model(ARCH)).encode(PROMPT)
    with grpc.insecure_channel(cluster.address) as channel:
        request = gateway_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_new_tokens=4))
        request.token_ids.ids.extend(ids)
        chunks = list(gateway_pb2_grpc.GatewayServiceStub(channel).Generate(request))
    assert [t for c in chunks for t in c.token_ids] == reference_generate(reference(ARCH), ids, 4)


def test_every_metric_a_service_serves_is_documented(cluster):
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    docs = (Path(__file__).parent.parent / "docs/http-api.md").read_text()
    urls = [
        f"{_root(cluster)}/metrics",
        cluster.by_name("expert-0").metrics_url,
        cluster.by_name("backbone").metrics_url,
    ]
    for url in urls:
        names = {f.name for f in text_string_to_metric_families(httpx.get(url, timeout=10).text)}
        undocumented = {n for n in names if n.startswith("remoe_") and f"`{n}" not in docs}
        assert not undocumented, f"{url}: not in docs/http-api.md: {sorted(undocumented)}"
