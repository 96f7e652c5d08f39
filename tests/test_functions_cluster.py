"""Functions under faults and idleness, through real processes: a killed replica, scale to zero."""

from __future__ import annotations

import os
import signal
import time

import pytest

from remoe.cluster import LocalCluster
from remoe.model.tokenizer import load_tokenizer
from remoe.sdk import Client
from tests.conftest import PROMPT, reference_generate, scrape

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI


@pytest.fixture(scope="module")
def function_cluster(tiny_model, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("function-cluster")
    with LocalCluster(tiny_model("olmoe"), port=0, remote_ratio=0.5, function_ttl_s=4.0, run_dir=run_dir) as cluster:
        yield cluster


def _functions(cluster):
    return list(Client(cluster.address).status().backbone.functions)


def test_deployed_functions_start_with_the_backbone(function_cluster):
    """The plan's functions start while the backbone loads (forked from the runtime template), before any request
    asks for them. (The first test on this cluster: no request has been served yet.)"""
    status = Client(function_cluster.address).status().backbone
    assert status.served_requests == 0, "this test must see the cluster before its first request"
    assert status.functions and all(f.cold_starts >= 1 for f in status.functions), list(status.functions)


def test_killing_a_function_replica_mid_generation_keeps_the_tokens_exact(function_cluster, tiny_model, reference):
    ids = load_tokenizer(tiny_model("olmoe")).encode(PROMPT)
    expected = reference_generate(reference("olmoe"), ids, 64)
    client = Client(function_cluster.address)
    assert client.generate(token_ids=ids, max_new_tokens=2).token_ids == expected[:2]
    deadline = time.monotonic() + 60  # requests do not wait for cold starts: wait here until the victim serves
    while not any((f.function, f.replica, f.state) == ("layer-1", 1, "warm") for f in _functions(function_cluster)):
        assert time.monotonic() < deadline, "layer-1 replica 1 did not start"
        time.sleep(0.1)
    pid_file = function_cluster.run_dir / "functions" / "layer-1-1.pid"  # layer 1 runs two replicas

    got = []
    for i, chunk in enumerate(client.stream(token_ids=ids, max_new_tokens=64)):
        got += chunk.token_ids
        if i == 4:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert got == expected
    killed = [f for f in _functions(function_cluster) if (f.function, f.replica) == ("layer-1", 1)]
    assert killed[0].crashes == 1, "the dead replica should have been noticed and replaced"


def test_every_replica_of_a_function_killed_mid_generation_keeps_the_tokens_exact(
    function_cluster, tiny_model, reference
):
    """Both replicas of layer 1's function die at once: its batches go to an expert service until the platform
    has replaced them."""
    ids = load_tokenizer(tiny_model("olmoe")).encode(PROMPT)
    expected = reference_generate(reference("olmoe"), ids, 48)
    client = Client(function_cluster.address)
    deadline = time.monotonic() + 90
    while sum((f.function, f.state) == ("layer-1", "warm") for f in _functions(function_cluster)) < 2:
        assert time.monotonic() < deadline, "layer-1's replicas did not start"
        # Each request pre-warms the functions and keeps the warm ones from their 4 s idle TTL meanwhile.
        client.generate(token_ids=ids, max_new_tokens=1)
        time.sleep(0.2)
    before = client.status().backbone
    got = []
    for i, chunk in enumerate(client.stream(token_ids=ids, max_new_tokens=48)):
        got += chunk.token_ids
        if i == 4:
            for replica in (0, 1):
                pid = int((function_cluster.run_dir / "functions" / f"layer-1-{replica}.pid").read_text())
                os.kill(pid, signal.SIGKILL)
    assert got == expected
    after = client.status().backbone
    elsewhere = (after.function_fallbacks + after.function_cold_fallbacks) - (
        before.function_fallbacks + before.function_cold_fallbacks
    )
    assert elsewhere > 0, "the dead function's batches were computed elsewhere"


def test_idle_functions_scale_to_zero_and_come_back_without_delaying_requests(function_cluster, tiny_model, reference):
    """After scale to zero the next request does not wait for cold starts (the functions' batches run on the
    expert services meanwhile, tokens exact); the functions start again and serve the requests after it."""
    ids = load_tokenizer(tiny_model("olmoe")).encode(PROMPT)
    expected = reference_generate(reference("olmoe"), ids, 8)
    client = Client(function_cluster.address)
    assert client.generate(token_ids=ids, max_new_tokens=8).token_ids == expected
    cold_starts = sum(f.cold_starts for f in _functions(function_cluster))
    deadline = time.monotonic() + 60
    while any(f.state != "cold" for f in _functions(function_cluster)):
        assert time.monotonic() < deadline, "functions did not scale to zero after their TTL"
        time.sleep(0.5)
    cold_fallbacks = client.status().backbone.function_cold_fallbacks
    calls = sum(f.calls for f in _functions(function_cluster))
    assert client.generate(token_ids=ids, max_new_tokens=8).token_ids == expected
    # The gateway warms the plan's functions as the request arrives: a function forked from the template may be
    # ready before the first MoE layer asks (its batches served there), else its batches went to an expert
    # service (a cold fallback). Either way every batch was computed somewhere, and the functions started again.
    woken_calls = sum(f.calls for f in _functions(function_cluster)) - calls
    cold_fallbacks = client.status().backbone.function_cold_fallbacks - cold_fallbacks
    assert cold_fallbacks > 0 or woken_calls > 0, "the woken request's function batches went nowhere"
    assert sum(f.cold_starts for f in _functions(function_cluster)) > cold_starts
    while not any(f.state == "warm" for f in _functions(function_cluster)):  # (the TTL is short: not all)
        assert time.monotonic() < deadline + 60, "functions did not come back after the request that woke them"
        time.sleep(0.2)
    calls = sum(f.calls for f in _functions(function_cluster))
    assert client.generate(token_ids=ids, max_new_tokens=8).token_ids == expected
    assert sum(f.calls for f in _functions(function_cluster)) > calls


def test_warm_starts_every_function_at_once(function_cluster):
    import grpc

    from remoe.proto import backbone_pb2, backbone_pb2_grpc

    deadline = time.monotonic() + 60
    while any(f.state != "cold" for f in _functions(function_cluster)):
        assert time.monotonic() < deadline, "functions did not scale to zero after their TTL"
        time.sleep(0.5)
    backbone = backbone_pb2_grpc.BackboneServiceStub(
        grpc.insecure_channel(function_cluster.by_name("backbone").address)
    )
    before = scrape(function_cluster.by_name("backbone").metrics_url)
    starts_before = sum(v for (name, _), v in before.items() if name == "remoe_function_cold_start_seconds_count")
    reply = backbone.Warm(backbone_pb2.WarmRequest(), timeout=10)
    assert reply.started == len({f.function for f in _functions(function_cluster)})
    assert all(f.state in ("starting", "warm") for f in _functions(function_cluster))
    # The backbone's /metrics counts them: instances warm (each for its 4 s TTL) and cold starts finished.
    deadline, most_warm = time.monotonic() + 60, 0.0
    while True:
        metrics = scrape(function_cluster.by_name("backbone").metrics_url)
        most_warm = max(most_warm, metrics[("remoe_function_instances", (("state", "warm"),))])
        starts = sum(v for (name, _), v in metrics.items() if name == "remoe_function_cold_start_seconds_count")
        if most_warm >= 1 and starts > starts_before:
            break
        assert time.monotonic() < deadline, f"{most_warm} warm at most, {starts - starts_before} cold starts"
        time.sleep(0.2)
