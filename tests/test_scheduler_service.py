"""The scheduler service, the plan cache and the metering ledger, with real Redis and real processes: every
request is planned, served with the exact reference tokens on the plan's functions, and metered once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import redis
import torch

from remoe.cluster import LocalCluster, free_port
from remoe.constants import LEDGER_STREAM
from remoe.model.tokenizer import load_tokenizer
from remoe.proto import backbone_pb2, backbone_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from remoe.scheduler import baselines
from remoe.scheduler.estimate import Tokens
from remoe.scheduler.ledger import FunctionUse, Ledger, MeterRecord
from remoe.scheduler.plan_service import PlanService
from remoe.scheduler.problem import Prices, Profile
from remoe.scheduler.profile_file import write_profile
from remoe.scheduler.shape import shape_of_model
from remoe.sdk import Client, InvalidArgument
from remoe.services.scheduler import SchedulerServicer
from remoe.transport import tensor_codec
from tests.conftest import PROMPT, reference_generate

pytestmark = pytest.mark.processes  # starts services, clusters, functions or the CLI

# Local experts slow and functions fast: a tight TTFT SLO can only be met by sending experts out.
FAST_FUNCTIONS = Profile(
    local_expert_s_per_token=0.01,
    backbone_prefill_s_per_token=1e-5,
    backbone_decode_s=1e-4,
    invoke_s=1e-3,
    remote_fit=(0.0, 1.0, 1e-4),
)


def _request(frequency, **fields) -> scheduler_pb2.PlanRequest:
    return scheduler_pb2.PlanRequest(
        frequency=tensor_codec.encode(torch.as_tensor(np.asarray(frequency), dtype=torch.float32)),
        **{"n_in": 40, "n_out_max": 16, **fields},
    )


@pytest.fixture(scope="module")
def service(tiny_model):
    model = tiny_model("qwen3_moe")
    shape = shape_of_model(model)
    return PlanService(shape, list(range(shape.layers)), FAST_FUNCTIONS), shape


def test_plans_are_cached_by_signature_and_a_tight_slo_sends_experts_out(service):
    plans, shape = service
    equal = np.full((shape.layers, shape.experts), 1 / shape.experts)
    loose = plans.plan(_request(equal))
    assert loose.feasible and not loose.cached
    tight = plans.plan(_request(equal, slo_ttft_s=0.5 * loose.ttft_s))
    assert tight.feasible and tight.ttft_s <= 0.5 * loose.ttft_s and any(layer.remote for layer in tight.layers)
    # A prompt 5 tokens shorter (same 32-token bucket) and a forecast a hair different: the same cached plan.
    again = plans.plan(
        _request(equal + 1e-4 * (np.arange(shape.experts) % 2 - 0.5), n_in=35, slo_ttft_s=0.5 * loose.ttft_s)
    )
    assert again.cached and again.signature == tight.signature and again.planning_ms < tight.planning_ms


def test_a_cached_plan_predicts_each_request_at_its_own_lengths(service):
    """A plan is made and cached for its bucket (lengths rounded up to 32), but what it predicts a request costs
    is that request's: an all-local plan predicts exactly what the MIX model does for the same lengths."""
    shape = service[1]
    plans = PlanService(shape, list(range(shape.layers)), Profile())  # local experts fast: nothing goes out
    equal = np.full((shape.layers, shape.experts), 1 / shape.experts)
    bucket = plans.plan(_request(equal, n_in=64, n_out_max=224))
    own = plans.plan(_request(equal, n_in=47, n_out_max=200))
    assert own.cached and own.signature == bucket.signature and not any(layer.remote for layer in own.layers)
    request = shape.request(equal, 47, 200)
    mix = baselines.mix(request, plans.profile, plans.prices, plans.limits, Tokens.of(request))
    assert own.cost_main + own.cost_remote == pytest.approx(mix.cost, rel=1e-9)
    assert own.ttft_s == pytest.approx(mix.ttft_s, rel=1e-9) and own.ttft_s < bucket.ttft_s
    assert own.cost_main < bucket.cost_main * 0.95  # 176 decode steps against 223
    assert (own.main_gpu_gb, own.main_cpu_gb) == (bucket.main_gpu_gb, bucket.main_cpu_gb)  # what is provisioned


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"frequency": np.full((1, 8), 1 / 8)}, "needs"),
        ({"frequency": np.full((3, 8), 0.5)}, "sum to 1"),
        ({"n_in": 0}, "n_in"),
        ({"slo_ttft_s": -1.0}, "slo_ttft_s"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_plan_requests_get_invalid_argument_naming_the_field(service, bad, message):
    plans, shape = service
    frequency = bad.pop("frequency", np.full((shape.layers, shape.experts), 1 / shape.experts))
    server = grpc.server(ThreadPoolExecutor(2))
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerServicer(plans), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as e:
            stub.Plan(_request(frequency, **bad), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in e.value.details()
        assert stub.Plan(_request(np.full((shape.layers, shape.experts), 1 / shape.experts)), timeout=10).feasible
    finally:
        server.stop(0)


_LEAN_SCHEDULER = """
import sys
import numpy as np
from remoe.proto import scheduler_pb2, tensor_pb2
from remoe.scheduler.problem import Prices
from remoe.services.scheduler import build_service

service = build_service(sys.argv[1], None, None, Prices())
shape = service.shape
frequency = np.full((shape.layers, shape.experts), 1 / shape.experts, dtype=np.float32)
wire = tensor_pb2.Tensor(dtype="float32", shape=list(frequency.shape), data=frequency.tobytes())
reply = service.plan(scheduler_pb2.PlanRequest(frequency=wire, n_in=40, n_out_max=16))
heavy = sorted(m for m in ("torch", "transformers", "safetensors") if m in sys.modules)
print(reply.feasible, len(reply.layers), shape.layers, ",".join(heavy) or "-")
"""


def test_the_scheduler_plans_without_importing_torch_or_transformers(tiny_model):
    """They held ~0.3 GB in a process that plans from numbers; the shape is read by a child process instead."""
    model = tiny_model("qwen3_moe")
    done = subprocess.run([sys.executable, "-c", _LEAN_SCHEDULER, str(model)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    feasible, planned_layers, layers, heavy = done.stdout.split()
    assert (feasible, planned_layers, heavy) == ("True", layers, "-")


def test_a_model_directory_the_scheduler_cannot_read_is_a_checkpoint_error(tmp_path):
    from remoe.errors import CheckpointError
    from remoe.services.scheduler import build_service

    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        build_service(str(tmp_path / "missing"), None, None, Prices())


def test_the_plan_cache_survives_a_restart_through_redis_and_works_without_it(service, redis_url):
    plans, shape = service
    frequency = np.full((shape.layers, shape.experts), 1 / shape.experts)
    first = PlanService(shape, list(range(shape.layers)), FAST_FUNCTIONS, redis_url=redis_url, model_id="t")
    assert not first.plan(_request(frequency, n_out_max=100)).cached
    restarted = PlanService(shape, list(range(shape.layers)), FAST_FUNCTIONS, redis_url=redis_url, model_id="t")
    assert restarted.plan(_request(frequency, n_out_max=100)).cached
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    down = PlanService(shape, list(range(shape.layers)), FAST_FUNCTIONS, redis_url=nowhere)
    assert down.plan(_request(frequency)).feasible and down.redis_errors >= 1


def _record(request_id: str) -> MeterRecord:
    return MeterRecord(request_id, "m", 10, 5, 0.1, 0.01, 1.0, 1.0, 0.14, 1e-6, 0.0)


def test_a_ledger_record_reads_back_across_versions_of_the_gateway_that_wrote_it():
    record = _record("a")
    record.functions = {"f": FunctionUse(1024, 0.5, 1e-5, 2.0)}
    assert MeterRecord.from_json(record.to_json()) == record
    newer = json.loads(record.to_json()) | {"field_from_later": 1}
    newer["functions"]["f"]["also_later"] = 2
    assert MeterRecord.from_json(json.dumps(newer)) == record
    older = json.loads(record.to_json())
    del older["predicted_cost_main"], older["functions"]["f"]["calls"]
    back = MeterRecord.from_json(json.dumps(older))
    assert back.predicted_cost_main == 0.0 and back.functions["f"].calls == 0.0 and back.request_id == "a"


def test_the_ledger_meters_each_request_exactly_once_and_buffers_while_redis_is_down(redis_url, tmp_path):
    ledger = Ledger(redis_url, stream="test:ledger")
    ledger.write(_record("a"))
    ledger.write(_record("a"))  # a retried write of the same request
    ledger.write(_record("b"))
    assert [r.request_id for r in ledger.read()] == ["a", "b"] and ledger.duplicates == 1
    # Redis down: records wait in order, nothing lost, nothing doubled when it comes back.
    port = free_port()
    offline = Ledger(f"redis://127.0.0.1:{port}/0", stream="test:ledger")
    for request_id in ("c", "d", "c"):
        offline.write(_record(request_id))
    assert offline.pending == 3
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while offline.flush():
            assert time.monotonic() < deadline, "the buffered records were not flushed"
            time.sleep(0.1)
        assert [r.request_id for r in offline.read()] == ["c", "d"] and offline.dropped == 0
    finally:
        server.terminate()
        server.wait()


def test_remoe_up_plans_each_request_runs_its_functions_with_exact_tokens_and_meters_it(
    tiny_model, reference, tmp_path
):
    model = tiny_model("qwen3_moe")
    ids = load_tokenizer(model).encode(PROMPT)
    expected = reference_generate(reference("qwen3_moe"), ids, 12)
    profile = tmp_path / "profile.json"
    write_profile(FAST_FUNCTIONS, profile)
    with LocalCluster(
        model, port=0, predictor=False, profile=profile, slo_ttft_ms=150, run_dir=tmp_path / "run"
    ) as cluster:
        with Client(cluster.address) as client:
            result = client.generate(token_ids=ids, max_new_tokens=12, request_id="req-1")
            assert result.token_ids == expected
            assert "function:" in result.usage.plan  # the plan moved experts to functions
            # req-1 did not wait for their cold starts (its batches ran on the expert service), and the backbone
            # starts a plan's functions a few at a time: requests with the same plan bring them all up.
            deadline = time.monotonic() + 120
            warming = 0
            while not all(f.state == "warm" for f in client.status().backbone.functions):
                assert time.monotonic() < deadline, "the plan's functions did not start"
                assert client.generate(token_ids=ids, max_new_tokens=12, request_id=f"warm-{warming}").token_ids == (
                    expected
                )
                warming += 1
                time.sleep(0.2)
            # What the gateway tells the scheduler runs: the warm functions, each with the experts it hosts.
            backbone = next(s for s in cluster.services if s.name == "backbone")
            with grpc.insecure_channel(backbone.address) as channel:
                running = backbone_pb2_grpc.BackboneServiceStub(channel).Running(backbone_pb2.RunningRequest())
            assert running.keep_alive_s > 0 and running.functions
            assert {f.name for f in running.functions} == {f.function for f in client.status().backbone.functions}
            assert all(len(f.layers) == len(f.experts) > 0 and f.memory_mb >= 1024 for f in running.functions)
            result = client.generate(token_ids=ids, max_new_tokens=12, request_id="req-2")
            assert result.token_ids == expected
            # the gateway's planning happens before the backbone's clock starts: usage says how long it took, and
            # the TTFT this client saw includes it
            assert result.usage.plan_s > 0 and result.usage.predict_s >= 0
            assert result.client_ttft_s > result.usage.ttft_s + result.usage.plan_s + result.usage.predict_s
            assert result.client_tpot_s > 0
            used = result.usage.function_seconds  # the SDK shows what the ledger bills
            assert used and all(v > 0 for v in used.values()) and result.usage.function_memory_mb.keys() == used.keys()
            calls = result.usage.function_calls  # each function answered at least one batch of this request alone
            assert calls.keys() == used.keys() and all(n >= 1 for n in calls.values())
            trips = result.usage.function_round_trip_seconds  # billed: the handlers' time, inside the round trips
            assert trips.keys() == used.keys() and all(trips[f] > used[f] for f in used)
            with pytest.raises(InvalidArgument, match="slo_tpot_s"):
                client.generate(token_ids=ids, max_new_tokens=2, slo_tpot_s=-1.0)
        records = Ledger(cluster.redis_url).read()
        assert [r.request_id for r in records] == ["req-1", *(f"warm-{i}" for i in range(warming)), "req-2"]
        first, second = records[0], records[-1]
        assert first.predicted_ttft_s > 0 and first.plan_signature and first.measured_ttft_s > 0
        assert second.plan_signature == first.plan_signature
        assert second.functions and all(f.seconds > 0 and f.memory_mb >= 1024 for f in second.functions.values())
        assert all(f.calls >= 1 for f in second.functions.values())
        assert all(f.round_trip_s > f.seconds for f in second.functions.values())
        assert second.cost_remote > 0 and second.cost_main > 0
        # the plan's prediction is kept in the same two parts as the bill, so a gap can be told apart
        assert second.predicted_cost_main > 0 and second.predicted_cost_remote > 0
        assert second.predicted_cost == pytest.approx(second.predicted_cost_main + second.predicted_cost_remote)
        # and the sizes the plan gave its remote layers, to set beside the billed ones
        assert second.planned_function_mb and all(mb >= 1024 for mb in second.planned_function_mb)
        summary = subprocess.run(
            [sys.executable, "-m", "remoe.cli", "cost", "--redis-url", cluster.redis_url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert summary.returncode == 0 and f"{2 + warming} request(s)" in summary.stdout, summary.stderr
        assert redis.Redis.from_url(cluster.redis_url).xlen(LEDGER_STREAM) == 2 + warming
