"""Faults through real processes: the planning services and the stores behind them die and come back; every
request completes with transformers' exact tokens (a missing part only degrades the plan), and the metering
ledger loses and doubles nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc
import pytest

from remoe.cluster import LocalCluster
from remoe.gateway.core import PRIOR_SOURCE
from remoe.model.tokenizer import load_tokenizer
from remoe.proto import predictor_pb2, predictor_pb2_grpc
from remoe.scheduler.ledger import Ledger
from remoe.sdk import Client
from remoe.settings import PredictorSettings, env_for
from tests.conftest import PROMPT, reference_generate, scrape, wait_until

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

ARCH = "qwen3_moe"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def planned(tiny_model, tmp_path_factory):
    """remoe up with predictor, scheduler (placeholder speeds) and a ledger on its own redis-server."""
    run_dir = tmp_path_factory.mktemp("faults")
    with LocalCluster(tiny_model(ARCH), port=0, expert_services=1, scheduler=True, run_dir=run_dir) as cluster:
        # Loud, as everywhere: these faults are about Redis and the services around it, not optional.
        assert cluster.redis_url is not None, "redis-server is not installed: apt-get install redis-server"
        yield cluster


@pytest.fixture(scope="module")
def case(tiny_model, reference):
    ids = load_tokenizer(tiny_model(ARCH)).encode(PROMPT)
    return ids, reference_generate(reference(ARCH), ids, NEW_TOKENS)


def _generate(cluster: LocalCluster, ids: list[int], request_id: str):
    return Client(cluster.address).generate(token_ids=ids, max_new_tokens=NEW_TOKENS, request_id=request_id)


def _ledger_with(cluster: LocalCluster, request_id: str) -> dict | None:
    """The ledger's records by request id (in the order written) once `request_id`'s is there (it is metered
    after the request's last chunk), else None."""
    records = {r.request_id: r for r in Ledger(cluster.redis_url).read()}
    return records if request_id in records else None


def _predictor_records(cluster: LocalCluster) -> float:
    """Activations the predictor has learned from (its Record calls that succeeded)."""
    samples = scrape(cluster.by_name("predictor").metrics_url)
    return samples.get(("remoe_predictor_calls_total", (("method", "Record"), ("outcome", "ok"))), 0.0)


def _kill(cluster: LocalCluster, name: str) -> None:
    process = cluster.by_name(name).process
    process.kill()
    process.wait()


def test_planning_services_expose_their_metrics_and_the_gateway_scores_forecasts(planned, case):
    """Each service serves its own /metrics; the gateway's holds each forecast's divergence from what happened."""
    ids, expected = case
    assert _generate(planned, ids, "metrics").token_ids == expected
    gateway = scrape(planned.http_url.removesuffix("/v1") + "/metrics")
    predictor = scrape(planned.by_name("predictor").metrics_url)
    scheduler = scrape(planned.by_name("scheduler").metrics_url)
    scored = sum(v for (name, _), v in gateway.items() if name == "remoe_gateway_forecast_divergence_count")
    assert scored >= 1
    assert sum(v for (name, _), v in predictor.items() if name == "remoe_predictor_calls_total") >= 1
    assert sum(v for (name, labels), v in scheduler.items() if name == "remoe_scheduler_calls_total") >= 1
    assert scheduler[("remoe_scheduler_plan_cache_misses_total", ())] >= 1


def test_predictor_down_plans_from_the_global_prior_then_forecasts_again(planned, case):
    ids, expected = case
    records_before = _predictor_records(planned)
    for i in range(2):  # teach the prior
        assert _generate(planned, ids, f"learn-{i}").token_ids == expected
    # The activation reaches the predictor in the background, after the last token.
    wait_until(lambda: _predictor_records(planned) >= records_before + 2, 30, "the predictor recorded both requests")
    _kill(planned, "predictor")
    down = _generate(planned, ids, "predictor-down")
    assert down.token_ids == expected
    assert down.usage.forecast_source == PRIOR_SOURCE
    planned.restart("predictor")
    deadline = time.monotonic() + 15  # the gateway's channel reconnects within its 2 s backoff
    for i in range(100):
        back = _generate(planned, ids, f"predictor-back-{i}")
        assert back.token_ids == expected
        if back.usage.forecast_source != PRIOR_SOURCE or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert back.usage.forecast_source in ("sps", "prior"), "forecasts come from the predictor again"


def test_scheduler_down_serves_everything_local_then_plans_again(planned, case):
    ids, expected = case
    metrics_url = planned.by_name("scheduler").metrics_url
    _kill(planned, "scheduler")
    down = _generate(planned, ids, "scheduler-down")
    assert down.token_ids == expected
    assert "function" not in down.usage.plan, "the safe default: every expert on the expert services"
    planned.restart("scheduler")
    deadline = time.monotonic() + 15  # the gateway's channel reconnects within its 2 s backoff
    for i in range(100):
        request_id = f"scheduler-back-{i}"
        assert _generate(planned, ids, request_id).token_ids == expected
        records = wait_until(lambda rid=request_id: _ledger_with(planned, rid), 10, "its metering record")
        if records[request_id].plan_signature or time.monotonic() > deadline:
            break
    assert records["scheduler-down"].plan_signature == "", "served without a plan"
    assert records[f"scheduler-back-{i}"].plan_signature, "planned again"
    assert planned.by_name("scheduler").metrics_url == metrics_url, "restarted where scrapers look"
    calls = scrape(metrics_url)  # the new process's counters: it planned (or found in Redis) the last request
    assert sum(v for (name, _), v in calls.items() if name == "remoe_scheduler_calls_total") >= 1


def test_redis_down_and_back_loses_and_doubles_no_metering_record(planned, case):
    ids, expected = case
    _kill(planned, "redis")  # it keeps nothing (--save ''): the stream starts empty when it is back
    during = [f"redis-down-{i}" for i in range(3)]
    for request_id in during:
        assert _generate(planned, ids, request_id).token_ids == expected
    planned.restart("redis")
    assert _generate(planned, ids, "redis-back").token_ids == expected  # its write flushes the buffer first
    records = wait_until(lambda: _ledger_with(planned, "redis-back"), 10, "the last request's metering record")
    metered = list(records)
    assert sorted(metered) == sorted(during + ["redis-back"]), "each request metered once, in the order served"
    assert metered == during + ["redis-back"]


def test_qdrant_unreachable_the_predictor_still_answers_and_requests_are_exact(tiny_model, case, tmp_path):
    ids, expected = case
    ready = tmp_path / "predictor.port"
    env = env_for(PredictorSettings, model=tiny_model(ARCH), port=0, qdrant_url="http://127.0.0.1:9", ready_file=ready)
    log = (tmp_path / "predictor.log").open("wb")
    argv = [sys.executable, "-m", "remoe.services.predictor"]
    predictor = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not ready.is_file():
            assert predictor.poll() is None and time.monotonic() < deadline, (tmp_path / "predictor.log").read_text()
            time.sleep(0.1)
        address = f"127.0.0.1:{ready.read_text()}"
        stub = predictor_pb2_grpc.PredictorServiceStub(grpc.insecure_channel(address))
        forecast = stub.Predict(predictor_pb2.PredictRequest(prompt=PROMPT, token_ids=ids), timeout=30)
        assert forecast.source == "equal", "no store, no prior: every expert equally likely"
        with LocalCluster(tiny_model(ARCH), port=0, expert_services=1, predictor_address=address) as cluster:
            assert Client(cluster.address).generate(token_ids=ids, max_new_tokens=NEW_TOKENS).token_ids == expected
        assert predictor.poll() is None, "recording into an unreachable Qdrant must not crash the predictor"
    finally:
        predictor.terminate()
        predictor.wait(10)
        log.close()
