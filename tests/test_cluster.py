"""End to end through real processes over real gRPC on 127.0.0.1: gateway, backbone, two expert services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import grpc
import httpx
import pytest
import torch

from remoe.cluster import LocalCluster
from remoe.constants import MAX_PROMPT_CHARS
from remoe.model.tokenizer import load_tokenizer
from remoe.proto import common_pb2, gateway_pb2, gateway_pb2_grpc
from remoe.sdk import AsyncClient, Client, DeadlineExceeded, InvalidArgument, Unavailable
from tests.conftest import ARCHS, PROMPT, reference_generate, reference_logits, warm_functions

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

PROMPTS = [
    "The quick brown fox",
    "Explain how a hash table works",
    "Write a short poem about the sea",
    "What is the capital of France?",
    "SELECT name, price FROM products",
    "The committee will meet on Monday",
    "Recipes: whisk two eggs with milk",
    "History remembers the printing press",
]


@pytest.fixture(scope="module")
def mixtral_cluster(tiny_model):
    """Shared by most tests here: two expert services plus a function per MoE layer (remote ratio 0.5)."""
    with LocalCluster(tiny_model("mixtral"), port=0, remote_ratio=0.5) as cluster:
        yield cluster


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "mixtral"] + ["mixtral"])
def test_every_architecture_through_the_cluster_matches_transformers(arch, tiny_model, reference, mixtral_cluster):
    """Two expert services, and half of each layer's experts in serverless functions (one per layer, every
    second one with two replicas)."""
    path = tiny_model(arch)
    ids = load_tokenizer(path).encode(PROMPT)
    expected = reference_generate(reference(arch), ids, 32)
    shared = arch == "mixtral"
    with nullcontext(mixtral_cluster) if shared else LocalCluster(path, port=0, remote_ratio=0.5) as cluster:
        client = Client(cluster.address)
        warm_functions(client)
        result = client.generate(token_ids=ids, max_new_tokens=32)
        functions = list(client.status().backbone.functions)
        _logprobs_over_sdk_and_http_equal_transformers(client, cluster, path, ids, reference(arch))
        _eight_staggered_requests_with_a_cancel_and_a_deadline(client, path, reference(arch))
    assert result.token_ids == expected
    plan = json.loads(result.usage.plan)
    services = [d for d in plan if not d.startswith("function:")]
    assert len(services) == 2, "experts should be spread over two expert services"
    groups = [d for d in plan if d.startswith("function:")]
    assert len(groups) >= 3, "every MoE layer should have its function"
    replicas = {f.function: 0 for f in functions}
    calls = {f.function: 0 for f in functions}
    for f in functions:
        replicas[f.function] += 1
        calls[f.function] += f.calls
    assert set(replicas) == {g.removeprefix("function:") for g in groups}
    assert 2 in replicas.values(), "some function should run two replicas"
    assert all(n > 0 for n in calls.values()), f"every function should have been called: {calls}"
    assert result.usage.prompt_tokens == len(ids)
    assert (result.usage.prefill_activations.sum(axis=1) == len(ids) * reference(arch).config.num_experts_per_tok).all()


def _logprobs_over_sdk_and_http_equal_transformers(client: Client, cluster, path, ids, model) -> None:
    """echo + logprobs: every prompt token's (the second on) and each generated token's log-probability equal
    transformers' own float32 log-softmax (1e-4), through the SDK and the HTTP API alike."""
    sdk = client.generate(token_ids=ids, max_new_tokens=4, logprobs=2, echo=True)
    sequence = ids + sdk.token_ids
    logp = torch.log_softmax(reference_logits(model, sequence), dim=-1)
    want = logp[torch.arange(len(sequence) - 1), torch.tensor(sequence[1:])]  # [T + 3]: token t + 1 under row t
    got = torch.tensor([p.logprob for p in sdk.prompt_logprobs + sdk.logprobs])
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    body = {"model": path.name, "prompt": ids, "max_tokens": 4, "logprobs": 2, "echo": True, "temperature": 0}
    reply = httpx.post(f"{cluster.http_url}/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    http = reply.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert http[0] is None and torch.allclose(torch.tensor(http[1:]), want, atol=1e-4, rtol=0)


def _eight_staggered_requests_with_a_cancel_and_a_deadline(client: Client, path, model) -> None:
    """Eight greedy requests of different prompt lengths and max_new_tokens, started at different times, share
    the backbone's decode steps; one more is cancelled by its client and one passes its deadline mid-run, and
    every other answer is still transformers' own."""
    tokenizer = load_tokenizer(path)
    prompts = [tokenizer.encode(" ".join(PROMPTS[: 1 + i % 4]) + f" {i}") for i in range(8)]
    lengths = [6, 20, 11, 3, 16, 9, 24, 5]
    results: dict[int, list[int]] = {}

    def run(i: int) -> None:
        time.sleep(0.05 * i)
        results[i] = client.generate(token_ids=prompts[i], max_new_tokens=lengths[i]).token_ids

    def cancel() -> None:
        stream = client.stream(prompt=PROMPT, max_new_tokens=900, ignore_eos=True)
        next(stream), next(stream)
        stream.close()

    def expire() -> None:
        with pytest.raises(DeadlineExceeded):
            client.generate(prompt=PROMPT, max_new_tokens=900, ignore_eos=True, timeout=1.0)

    with ThreadPoolExecutor(10) as pool:
        done = [pool.submit(run, i) for i in range(8)] + [pool.submit(cancel), pool.submit(expire)]
        for future in done:
            future.result(timeout=120)
    for i in range(8):
        assert results[i] == reference_generate(model, prompts[i], lengths[i]), f"request {i}"
    batch = client.status().backbone.batch
    assert batch.enabled and batch.steps > 0 and batch.recent_step_requests_mean > 1


def test_eight_concurrent_clients_get_their_exact_outputs(mixtral_cluster, tiny_model, reference):
    tokenizer = load_tokenizer(tiny_model("mixtral"))
    expected = {p: reference_generate(reference("mixtral"), tokenizer.encode(p), 24) for p in PROMPTS}
    client = Client(mixtral_cluster.address)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        outputs = pool.map(lambda p: client.generate(prompt=p, max_new_tokens=24), PROMPTS)
        results = dict(zip(PROMPTS, outputs, strict=True))
    for prompt, result in results.items():
        assert result.token_ids == expected[prompt], prompt
        assert result.text == tokenizer.decode(expected[prompt], skip_special_tokens=True)


def test_stream_and_async_client_agree_with_generate(mixtral_cluster):
    client = Client(mixtral_cluster.address)
    whole = client.generate(prompt=PROMPT, max_new_tokens=10)
    chunks = list(client.stream(prompt=PROMPT, max_new_tokens=10))
    assert [t for c in chunks for t in c.token_ids] == whole.token_ids
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10

    async def run():
        async with AsyncClient(mixtral_cluster.address) as aclient:
            return await aclient.generate(prompt=PROMPT, max_new_tokens=10)

    assert asyncio.run(run()).token_ids == whole.token_ids


def test_stop_string_ends_generation_before_it(mixtral_cluster):
    client = Client(mixtral_cluster.address)
    full = client.generate(prompt=PROMPT, max_new_tokens=24)
    cut = full.text[3:6]
    assert cut, "the reference text is too short to pick a stop string from"
    stopped = client.generate(prompt=PROMPT, max_new_tokens=24, stop=[cut])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(cut)]


def _raw_request(**fields) -> gateway_pb2.GenerateRequest:
    sampling = fields.pop("sampling", common_pb2.SamplingParams(max_new_tokens=4))
    return gateway_pb2.GenerateRequest(sampling=sampling, **fields)


BAD_REQUESTS = {
    "neither": (_raw_request(), "give a prompt or token_ids"),
    "empty-prompt": (_raw_request(prompt=""), "the prompt is empty"),
    "empty-ids": (_raw_request(token_ids=gateway_pb2.TokenIds(ids=[])), "no tokens"),
    "id-outside-vocab": (_raw_request(token_ids=gateway_pb2.TokenIds(ids=[1, 10**9])), "outside"),
    "zero-new-tokens": (_raw_request(prompt="hi", sampling=common_pb2.SamplingParams()), "max_new_tokens"),
    "too-many-new-tokens": (
        _raw_request(prompt="hi", sampling=common_pb2.SamplingParams(max_new_tokens=10**6)),
        "max_new_tokens",
    ),
    "longer-than-context": (
        _raw_request(prompt="hi " * 2000, sampling=common_pb2.SamplingParams(max_new_tokens=8)),
        "context",
    ),
    "negative-temperature": (
        _raw_request(prompt="hi", sampling=common_pb2.SamplingParams(max_new_tokens=4, temperature=-1)),
        "temperature",
    ),
    "top-p-above-1": (
        _raw_request(prompt="hi", sampling=common_pb2.SamplingParams(max_new_tokens=4, top_p=1.5)),
        "top_p",
    ),
}


@pytest.mark.parametrize("request_, message", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument_and_the_cluster_keeps_serving(request_, message, mixtral_cluster):
    stub = gateway_pb2_grpc.GatewayServiceStub(grpc.insecure_channel(mixtral_cluster.address))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request_, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert len(Client(mixtral_cluster.address).generate(prompt="ok", max_new_tokens=2).token_ids) == 2


def test_sdk_raises_typed_errors(mixtral_cluster):
    client = Client(mixtral_cluster.address)
    with pytest.raises(InvalidArgument, match="outside"):
        client.generate(token_ids=[10**9], max_new_tokens=2)
    with pytest.raises(ValueError, match="exactly one"):
        client.generate(max_new_tokens=2)
    with pytest.raises(Unavailable):
        Client("127.0.0.1:9", timeout=5).generate(prompt="hi", max_new_tokens=2)


def _backbone_active(cluster) -> int:
    return Client(cluster.address).status().backbone.active_requests


def _wait_idle(cluster, timeout_s=10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _backbone_active(cluster) == 0:
            return True
        time.sleep(0.1)
    return False


def test_deadline_and_cancellation_stop_the_work(mixtral_cluster):
    client = Client(mixtral_cluster.address)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        client.generate(prompt=PROMPT, max_new_tokens=900, ignore_eos=True, timeout=0.5)
    assert time.monotonic() - start < 5
    assert _wait_idle(mixtral_cluster), "the backbone kept working after the deadline"

    stream = client.stream(prompt=PROMPT, max_new_tokens=900, ignore_eos=True)
    next(stream), next(stream)
    assert _backbone_active(mixtral_cluster) == 1
    stream.close()  # the consumer walks away
    assert _wait_idle(mixtral_cluster), "the backbone kept working after the client cancelled"


def test_status_reports_every_service(mixtral_cluster):
    Client(mixtral_cluster.address).generate(prompt=PROMPT, max_new_tokens=4)
    out = subprocess.run(
        [sys.executable, "-m", "remoe.cli", "status", "--address", mixtral_cluster.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "MixtralForCausalLM" in out.stdout
    assert out.stdout.count("expert-") == 2 and "hits" in out.stdout


def test_an_expert_service_killed_mid_generation_and_restarted(tiny_model, reference):
    """Its batches go to the other service (tokens exact); restarted on its port, it is reconnected and serves
    again; with every service dead a request ends UNAVAILABLE within its deadline."""
    ids = load_tokenizer(tiny_model("olmoe")).encode(PROMPT)
    expected = reference_generate(reference("olmoe"), ids, 48)
    with LocalCluster(tiny_model("olmoe"), port=0, predictor=False) as cluster:
        client = Client(cluster.address)
        got = []
        for i, chunk in enumerate(client.stream(token_ids=ids, max_new_tokens=48)):
            got += chunk.token_ids
            if i == 4:
                cluster.by_name("expert-1").process.kill()
        assert got == expected
        status = client.status().backbone
        assert [d.healthy for d in status.destinations].count(False) == 1 and status.service_failovers >= 1

        restarted = cluster.restart("expert-1")
        before = _batches(client, restarted.address)
        deadline = time.monotonic() + 20  # the backbone's channel reconnects within its 2 s backoff
        while True:
            assert client.generate(token_ids=ids, max_new_tokens=48).token_ids == expected
            if _batches(client, restarted.address) > before or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert _batches(client, restarted.address) > before, "the restarted service is used again"
        assert all(d.healthy for d in client.status().backbone.destinations)

        for name in ("expert-0", "expert-1"):
            cluster.by_name(name).process.kill()
            cluster.by_name(name).process.wait()
        start = time.monotonic()
        with pytest.raises(Unavailable, match="expert service"):
            client.generate(token_ids=ids, max_new_tokens=4, timeout=20)
        assert time.monotonic() - start < 20


def _batches(client: Client, address: str) -> int:
    d = next(d for d in client.status().backbone.destinations if d.address == address)
    return d.stats.batches


def test_remoe_up_serves_and_stops_every_process_on_sigint(tiny_model, tmp_path):
    up = subprocess.Popen(
        [sys.executable, "-m", "remoe.cli", "up", "--model", str(tiny_model("qwen3_moe"))]
        + ["--port", "0", "--http-port", "0", "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in up.stdout:
            lines.append(line)
            if "gateway listening on" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(120), "".join(lines)
        address = next(line for line in lines if "gateway listening on" in line).split()[3].rstrip(";")
        assert len(Client(address).generate(prompt=PROMPT, max_new_tokens=3).token_ids) == 3
        _openai_client_matches_the_sdk(lines, address, tiny_model("qwen3_moe").name)
        assert len(list(tmp_path.glob("*.log"))) == 6
        children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 6  # 2 expert services, backbone, redis, predictor, gateway
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()
        assert any("stopped" in line for line in lines)
    finally:
        if up.poll() is None:
            up.kill()


def _openai_client_matches_the_sdk(lines: list[str], address: str, model: str) -> None:
    """`remoe up` printed its HTTP API's address; the official client completes and streams there, greedy
    answers equal to the SDK's."""
    import openai

    deadline = time.monotonic() + 10
    while not any("OpenAI-compatible API on" in line for line in lines):
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    url = next(line for line in lines if "OpenAI-compatible API on" in line).split()[3]
    oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    expected = Client(address).generate(prompt=PROMPT, max_new_tokens=8).text
    assert oai.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text == expected
    streamed = oai.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_one_trace_spans_gateway_backbone_and_expert_services(tiny_model, tmp_path):
    import re

    cluster = LocalCluster(tiny_model("mixtral"), port=0, run_dir=tmp_path, env={"OTEL_TRACES_EXPORTER": "console"})
    with cluster:
        Client(cluster.address).generate(prompt=PROMPT, max_new_tokens=3)
        cluster.stop()  # spans are flushed as each service exits

        def spans(name: str) -> list[tuple[str, str]]:
            text = (tmp_path / f"{name}.log").read_text()
            names = re.findall(r'"name": "([^"]+)"', text)
            traces = re.findall(r'"trace_id": "(0x[0-9a-f]+)"', text)
            return list(zip(names, traces, strict=False))

        gateway, backbone, expert = spans("gateway"), spans("backbone"), spans("expert-0") + spans("expert-1")
    generate_traces = {t for n, t in backbone if n == "generate"}
    assert {"prefill", "decode_step", "expert_fanout"} <= {n for n, _ in backbone}
    assert generate_traces & {t for _, t in gateway}, "gateway and backbone spans are not in one trace"
    assert generate_traces & {t for _, t in expert}, "expert service spans are not in the request's trace"


def test_the_gateway_learns_from_requests_and_scores_its_forecasts(mixtral_cluster):
    client = Client(mixtral_cluster.address)
    prompt = "Forecast me: the quick brown fox jumps over the lazy dog"
    client.generate(prompt=prompt, max_new_tokens=4)
    deadline = time.monotonic() + 20
    while True:
        # Record is sent in the background after the first request finished; until it lands, SPS may already
        # answer from other tests' stored prompts, so wait for this prompt's own record to be used.
        usage = client.generate(prompt=prompt, max_new_tokens=4).usage
        if (usage.forecast_source == "sps" and usage.forecast_js < 0.05) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert usage.forecast_source == "sps"
    assert usage.forecast_js < 0.05, "a stored identical prompt should forecast its own activation"


def test_predictor_service_round_trip_and_bad_input(mixtral_cluster):
    from remoe.proto import common_pb2, predictor_pb2, predictor_pb2_grpc
    from remoe.transport import tensor_codec

    stub = predictor_pb2_grpc.PredictorServiceStub(grpc.insecure_channel(mixtral_cluster.by_name("predictor").address))
    first = stub.Predict(predictor_pb2.PredictRequest(prompt="zebra crossing at dawn", token_ids=[5, 6, 7]), timeout=30)
    layers = list(first.moe_layers)
    experts = tensor_codec.decode(first.frequency).shape[1]
    prefill = [0] * (len(layers) * experts)
    for row in range(len(layers)):
        prefill[row * experts + 3] = prefill[row * experts + 5] = 3  # 3 tokens, top-2: experts 3 and 5
    activations = common_pb2.ActivationSummary(moe_layers=layers, num_experts=experts, top_k=2, prefill=prefill)
    stub.Record(
        predictor_pb2.RecordRequest(prompt="zebra crossing at dawn", token_ids=[5, 6, 7], activations=activations),
        timeout=30,
    )
    again = stub.Predict(predictor_pb2.PredictRequest(prompt="zebra crossing at dawn", token_ids=[5, 6, 7]), timeout=30)
    frequency = tensor_codec.decode(again.frequency)
    assert again.source == "sps"
    assert float(frequency[:, [3, 5]].sum()) > 0.5 * len(layers)

    for request, message in [
        (predictor_pb2.PredictRequest(prompt=""), "empty"),
        (predictor_pb2.RecordRequest(prompt="x", activations=common_pb2.ActivationSummary(moe_layers=[99])), "layers"),
    ]:
        method = stub.Predict if isinstance(request, predictor_pb2.PredictRequest) else stub.Record
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # the gateway's limit too: one limit for a prompt
        stub.Predict(predictor_pb2.PredictRequest(prompt="a" * (MAX_PROMPT_CHARS + 1), token_ids=[1]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and str(MAX_PROMPT_CHARS) in err.value.details()
    huge = stub.Predict(predictor_pb2.PredictRequest(prompt="a" * MAX_PROMPT_CHARS, token_ids=[1] * 10), timeout=60)
    frequency = tensor_codec.decode(huge.frequency)  # forecast like any prompt: a distribution per layer
    assert tuple(frequency.shape) == (len(layers), experts)
    torch.testing.assert_close(frequency.sum(dim=1), torch.ones(len(layers)), rtol=0, atol=1e-5)


def test_the_cluster_says_where_its_cold_start_went(mixtral_cluster):
    """Every service's start, from its own record: spawned, its imports, the steps of its init, serving. Every
    service is spawned at launch; the backbone and the gateway wait (after their imports) for the services they
    talk to, so they serve after them."""
    lines = {line.split(":", 1)[0]: line for line in mixtral_cluster.startup_breakdown()}
    lines.pop("redis", None)  # where installed: not a Remoe service, it keeps no record
    assert set(lines) == {"expert-0", "expert-1", "predictor", "backbone", "gateway"}
    serving = {}
    for name, line in lines.items():
        match = re.search(r"spawned at ([\d.]+) s, serving at ([\d.]+) s \(process [\d.]+, imports ([\d.]+)", line)
        assert match, line
        spawned, serving[name], imports = map(float, match.groups())
        assert spawned < 1.0 and 0 < imports <= serving[name] - spawned + 0.05, line
    for waiting in ("backbone", "gateway"):
        assert "wait for the services it needs" in lines[waiting], lines[waiting]
    assert "open weights" in lines["backbone"] and "load model" in lines["backbone"]
    assert "start functions" in lines["backbone"]  # the functions' cold starts overlap the model's load
    assert serving["backbone"] >= max(serving["expert-0"], serving["expert-1"])
    assert serving["gateway"] >= max(serving["backbone"], serving["predictor"])


def test_services_stop_when_the_process_that_started_them_is_killed(tiny_model, tmp_path):
    """A `remoe up` killed hard (SIGKILL: no clean-up) must not leave its services running and holding memory."""
    script = f"""
import os, signal
from remoe.cluster import LocalCluster

cluster = LocalCluster({str(tiny_model("mixtral"))!r}, port=0, expert_services=1, predictor=False,
                       run_dir={str(tmp_path)!r}).start()
print(" ".join(str(s.process.pid) for s in cluster.services), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr
    pids = [int(pid) for pid in run.stdout.split()]
    assert len(pids) == 3  # expert service, backbone, gateway
    deadline = time.monotonic() + 30
    while alive := [pid for pid in pids if _running(pid)]:
        assert time.monotonic() < deadline, f"services {alive} outlived the process that started them"
        time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" not in f.read().lower()
    except FileNotFoundError:
        return False
