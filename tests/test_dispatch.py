"""DispatchingExecutor over real expert servers on 127.0.0.1 (in this process, for speed), through gRPC and
through the co-located data plane (a unix socket) alike."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest
import torch

from remoe.checkpoint.weights import open_weights
from remoe.dispatch.executor import DispatchingExecutor
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.placement import LOCAL, Placement, Shard
from remoe.experts.servicer import ExpertServicer
from remoe.model.engine import LocalEngine
from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.transport import tensor_codec
from remoe.transport.expert_stream import ExpertStream, RemoteExpertError
from remoe.transport.local_plane import LocalPlaneServer
from remoe.transport.request_context import current_deadline
from tests.conftest import ARCHS, PROMPT, reference_generate


class ExpertServers:
    def __init__(self, weights, shards: list[Shard], plane: bool = False) -> None:
        """`plane`: each server also serves its co-located data plane (and advertises it in Stats)."""
        arch = weights.arch
        self.servers, self.addresses, self.servicers = [], [], []
        for i, shard in enumerate(shards):
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
            executor = LocalExpertExecutor(weights, hosted=shard.experts(arch.layer_indices, arch.num_experts))
            servicer = ExpertServicer(executor, f"expert-{i}")
            if plane:
                servicer.local_plane = LocalPlaneServer(f"test-expert-{i}", servicer._answer, 32)
            expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self.servers.append(server)
            self.servicers.append(servicer)
            self.addresses.append(f"127.0.0.1:{port}")

    def plane_batches(self) -> int:
        return sum(s.local_plane.batches for s in self.servicers if s.local_plane is not None)

    def stop(self) -> None:
        for server in self.servers:
            server.stop(0).wait()
        for servicer in self.servicers:
            if servicer.local_plane is not None:
                servicer.local_plane.close()


@pytest.fixture
def servers():
    started = []

    def start(weights, shards, plane=False):
        s = ExpertServers(weights, shards, plane)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _engine_over(path, placement, weights, local_plane: bool = False):
    arch = weights.arch
    local = LocalExpertExecutor(weights, hosted=placement.destinations.get(LOCAL, []))
    executor = DispatchingExecutor(
        placement, arch.layer_indices, arch.num_experts, local=local, local_plane=local_plane
    )
    return LocalEngine(path, device="cpu", executor=executor), executor


@pytest.mark.parametrize("transport", ["grpc", "plane"])
@pytest.mark.parametrize("arch_name", ARCHS)
def test_remote_and_local_experts_together_reproduce_transformers(arch_name, transport, tiny_model, reference, servers):
    path = tiny_model(arch_name)
    weights = open_weights(path)
    arch = weights.arch
    remote = servers(weights, [Shard(1, 3), Shard(2, 3)], plane=transport == "plane")
    placement = Placement(
        {
            LOCAL: Shard(0, 3).experts(arch.layer_indices, arch.num_experts),
            remote.addresses[0]: Shard(1, 3).experts(arch.layer_indices, arch.num_experts),
            remote.addresses[1]: Shard(2, 3).experts(arch.layer_indices, arch.num_experts),
        }
    )
    engine, executor = _engine_over(path, placement, weights, local_plane=transport == "plane")
    try:
        ids = engine.encode(PROMPT)
        assert engine.generate(token_ids=ids, max_new_tokens=16).token_ids == reference_generate(
            reference(arch_name), ids, 16
        )
        assert len(executor.fanout_s) > 0
        # Every batch went the way asked: all through the unix socket, or none.
        computed = sum(v.Stats(None, None).batches for v in remote.servicers)
        assert computed > 0 and remote.plane_batches() == (computed if transport == "plane" else 0)
        paths = {s.plane_path for s in executor.streams.values()}
        assert paths == ({str(v.local_plane.path) for v in remote.servicers} if transport == "plane" else {None})
    finally:
        executor.close()


def test_a_down_expert_service_gives_unavailable_fast(tiny_model):
    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    placement = Placement({"127.0.0.1:9": Shard(0, 1).experts(arch.layer_indices, arch.num_experts)})
    executor = DispatchingExecutor(placement, arch.layer_indices, arch.num_experts)
    start = time.monotonic()
    with pytest.raises(RemoteExpertError) as err:
        executor.compute(0, torch.randn(2, arch.hidden_size), torch.tensor([[0, 1], [2, 3]]), torch.ones(2, 2))
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:9" in str(err.value)
    assert time.monotonic() - start < 10
    executor.close()


def test_an_expired_deadline_is_answered_without_computing(tiny_model, servers):
    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    remote = servers(weights, [Shard(0, 1)])
    placement = Placement({remote.addresses[0]: Shard(0, 1).experts(arch.layer_indices, arch.num_experts)})
    executor = DispatchingExecutor(placement, arch.layer_indices, arch.num_experts)
    token = current_deadline.set(time.time() - 1)
    try:
        with pytest.raises(RemoteExpertError) as err:
            executor.compute(0, torch.randn(1, arch.hidden_size), torch.tensor([[0, 1]]), torch.ones(1, 2))
    finally:
        current_deadline.reset(token)
        executor.close()
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def _batch(weights, **overrides):
    h = weights.arch.hidden_size
    fields = dict(
        layer=0,
        hidden_states=tensor_codec.encode(torch.randn(2, h)),
        top_k_index=tensor_codec.encode(torch.tensor([[0, 1], [1, -1]])),
        top_k_weights=tensor_codec.encode(torch.ones(2, 2)),
    )
    fields.update(overrides)
    return expert_pb2.ExpertBatch(**fields)


@pytest.mark.parametrize("plane", [False, True], ids=["grpc", "plane"])
def test_bad_batches_get_their_own_error_and_the_stream_keeps_serving(plane, tiny_model, servers):
    weights = open_weights(tiny_model("mixtral"))
    h = weights.arch.hidden_size
    remote = servers(weights, [Shard(0, 2)], plane=plane)
    stream = ExpertStream(remote.addresses[0], local_plane=plane)
    bad_data = tensor_codec.encode(torch.randn(2, h))
    bad_data.data = bad_data.data[:-4]
    cases = {
        "508 data bytes": _batch(weights, hidden_states=bad_data),
        "hidden size": _batch(weights, hidden_states=tensor_codec.encode(torch.randn(2, h + 1))),
        "inconsistent shapes": _batch(weights, top_k_weights=tensor_codec.encode(torch.ones(3, 2))),
        "outside": _batch(weights, top_k_index=tensor_codec.encode(torch.tensor([[0, 99], [1, 0]]))),
        "no routed experts": _batch(weights, layer=57),
        "float32 where int64 is expected": _batch(weights, top_k_index=tensor_codec.encode(torch.ones(2, 2))),
    }
    try:
        for message, batch in cases.items():
            result = stream.submit(batch)[1].result(timeout=10)
            assert result.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
            assert message in result.error
        not_hosted = stream.submit(_batch(weights))[1].result(timeout=10)  # expert 1 is shard 1's
        assert not_hosted.status_code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        ok = stream.submit(_batch(weights, top_k_index=tensor_codec.encode(torch.tensor([[0, 2], [4, -1]]))))
        assert ok[1].result(timeout=10).status_code == 0
    finally:
        stream.close()


def test_many_threads_share_one_stream(tiny_model, servers):
    weights = open_weights(tiny_model("olmoe"))
    arch = weights.arch
    remote = servers(weights, [Shard(0, 1)])
    placement = Placement({remote.addresses[0]: Shard(0, 1).experts(arch.layer_indices, arch.num_experts)})
    executor = DispatchingExecutor(placement, arch.layer_indices, arch.num_experts)
    local = LocalExpertExecutor(weights)
    cases = [
        (
            torch.randn(4, arch.hidden_size),
            torch.randint(0, arch.num_experts, (4, arch.top_k)),
            torch.rand(4, arch.top_k),
        )
        for _ in range(24)
    ]
    try:
        with futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda c: executor.compute(0, *c), cases))
        for case, out in zip(cases, got, strict=True):
            torch.testing.assert_close(out, local.compute(0, *case), rtol=0, atol=1e-5)
    finally:
        executor.close()


def test_load_unload_and_stats_rpcs(tiny_model, servers):
    weights = open_weights(tiny_model("mixtral"))
    remote = servers(weights, [Shard(0, 2)])
    stub = expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(remote.addresses[0]))
    refs = [expert_pb2.ExpertRef(layer=1, expert=0), expert_pb2.ExpertRef(layer=1, expert=2)]

    loaded = stub.Load(expert_pb2.LoadRequest(experts=refs), timeout=10)
    assert loaded.bytes_loaded == 2 * weights.expert_nbytes(1, 0)
    stats = stub.Stats(expert_pb2.StatsRequest(), timeout=10)
    assert {(r.layer, r.expert) for r in stats.resident} == {(1, 0), (1, 2)}
    assert len(stats.hosted) == len(weights.arch.layer_indices) * weights.arch.num_experts // 2
    assert stub.Unload(expert_pb2.UnloadRequest(experts=refs[:1]), timeout=10).unloaded == 1
    assert {(r.layer, r.expert) for r in stub.Stats(expert_pb2.StatsRequest(), timeout=10).resident} == {(1, 2)}

    with pytest.raises(grpc.RpcError) as err:
        stub.Load(expert_pb2.LoadRequest(experts=[expert_pb2.ExpertRef(layer=1, expert=1)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not hosted" in err.value.details()


class StubPlatform:
    """Stands in for the function platform (a unit test of the failover logic around it): fixed replicas."""

    def __init__(self, replicas: list[str]) -> None:
        self.replicas = replicas
        self.touched: list[int] = []

    def live_endpoints(self, name):
        return list(enumerate(self.replicas))

    def endpoints(self, name, timeout_s):
        return self.replicas

    def touch(self, name, replica):
        self.touched.append(replica)


@pytest.mark.parametrize("live_replica", [True, False])
def test_a_failed_function_replica_is_retried_then_falls_back_to_an_expert_service(live_replica, tiny_model, servers):
    from remoe.experts.placement import function_destination

    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    remote = servers(weights, [Shard(0, 1), Shard(0, 1)])  # [a function replica, the expert service]
    dead = "127.0.0.1:9"
    replicas = [dead, remote.addresses[0]] if live_replica else [dead, dead]
    experts = Shard(0, 1).experts(arch.layer_indices, arch.num_experts)
    placement = Placement({remote.addresses[1]: experts[:1], function_destination("f"): experts[1:]})
    platform = StubPlatform(replicas)
    executor = DispatchingExecutor(placement, arch.layer_indices, arch.num_experts, platform=platform)
    hidden, index, routing = torch.randn(2, arch.hidden_size), torch.tensor([[2, 3], [4, 0]]), torch.rand(2, 2)
    try:
        for _ in range(3):  # round-robin lands on the dead replica at least once
            out = executor.compute(0, hidden, index, routing)
            torch.testing.assert_close(out, LocalExpertExecutor(weights).compute(0, hidden, index, routing))
    finally:
        executor.close()
    if live_replica:
        assert executor.retries >= 1 and executor.fallbacks == 0
    else:
        assert executor.fallbacks >= 1


class UnstartablePlatform(StubPlatform):
    """A function that is not serving yet: no live replica; starting one fails (no room in the memory budget, a bad
    spec), or it is starting in the background."""

    def __init__(self) -> None:
        super().__init__([])
        self.warmed: list[str] = []

    def live_endpoints(self, name):
        return []

    def endpoints(self, name, timeout_s):
        from remoe.platform.base import FunctionStartError

        raise FunctionStartError(f"function {name} does not fit the local platform's memory budget")

    def warm(self, names, bounded=False):
        self.warmed.extend(names)


@pytest.mark.parametrize("cold_start", ["wait", "fallback"])
def test_a_function_not_serving_has_its_batch_computed_on_an_expert_service(cold_start, tiny_model, servers):
    """wait: the start is tried and fails; fallback: the start is only requested, the batch does not wait for it."""
    from remoe.experts.placement import function_destination

    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    remote = servers(weights, [Shard(0, 1)])
    experts = Shard(0, 1).experts(arch.layer_indices, arch.num_experts)
    placement = Placement({remote.addresses[0]: experts[:1], function_destination("f"): experts[1:]})
    platform = UnstartablePlatform()
    executor = DispatchingExecutor(
        placement, arch.layer_indices, arch.num_experts, platform=platform, cold_start=cold_start
    )
    hidden, index, routing = torch.randn(2, arch.hidden_size), torch.tensor([[2, 3], [4, 0]]), torch.rand(2, 2)
    try:
        out = executor.compute(0, hidden, index, routing)
    finally:
        executor.close()
    torch.testing.assert_close(out, LocalExpertExecutor(weights).compute(0, hidden, index, routing))
    if cold_start == "wait":
        assert (executor.fallbacks, executor.cold_fallbacks, platform.warmed) == (1, 0, [])
    else:
        assert (executor.fallbacks, executor.cold_fallbacks, platform.warmed) == (0, 1, ["f"])
    # The service stood in for the function: it loaded f's experts as guests, and lets them go once unused; its own
    # expert stays.
    layer, own = experts[0]
    assert own == 0  # the service's one expert; index's 2, 3 and 4 are f's
    cache = remote.servicers[0].executor.cache
    assert set(cache.resident()) == {(layer, 0), (layer, 2), (layer, 3), (layer, 4)}
    assert cache.release_idle_guests() == 0  # still within guest_idle_s
    assert cache.release_idle_guests(time.monotonic() + cache.guest_idle_s) == 3
    assert set(cache.resident()) <= {(layer, own)} and cache.guest_bytes == 0


def test_an_unknown_cold_start_policy_is_refused(tiny_model):
    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    placement = Placement({"local": Shard(0, 1).experts(arch.layer_indices, arch.num_experts)})
    with pytest.raises(ValueError, match="cold_start must be one of"):
        DispatchingExecutor(placement, arch.layer_indices, arch.num_experts, cold_start="hope")


def test_a_plans_experts_that_running_functions_host_go_there_and_the_rest_to_a_new_function():
    from remoe.dispatch.plan_reuse import reuse_running
    from remoe.platform.base import FunctionSpec, content_name

    running = [FunctionSpec("warm-a", ((1, 0), (1, 1)), 1024), FunctionSpec("starting-b", ((1, 1), (1, 2)), 2048)]
    plan = [
        FunctionSpec("l1-new", ((1, 1), (1, 2), (1, 3)), 1024),  # 1 and 2 are running, 3 is not
        FunctionSpec("l2-new", ((2, 5),), 1024),  # nothing running hosts it
        FunctionSpec("starting-b", ((1, 4),), 2048),  # named like a running function: sent there as is
    ]
    new, reused = reuse_running(plan, running)
    rest = ((1, 3),)
    assert new == [FunctionSpec(content_name(rest, 1024), rest, 1024), plan[1]]
    assert reused == {"warm-a": [(1, 1)], "starting-b": [(1, 2), (1, 4)]}  # the first (warm) host wins
    assert reuse_running(plan, []) == (plan, {})


def test_a_batched_step_of_requests_with_different_plans_sends_one_batch_per_destination(tiny_model, servers):
    """Rows of three requests in one step, the middle one's plan putting experts in a function: each destination
    gets one batch with every row it serves, the sum equals all experts computed in one place, and only the
    request whose plan used the function is billed for it."""
    from remoe.experts.placement import function_destination
    from remoe.transport.request_context import FunctionBill, RequestRows, current_batch

    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    experts = Shard(0, 1).experts(arch.layer_indices, arch.num_experts)
    remote = servers(weights, [Shard(0, 2), Shard(1, 2), Shard(0, 1)])  # services A and B; a function replica
    default = Placement(
        {
            remote.addresses[0]: Shard(0, 2).experts(arch.layer_indices, arch.num_experts),
            remote.addresses[1]: Shard(1, 2).experts(arch.layer_indices, arch.num_experts),
        }
    )
    executor = DispatchingExecutor(
        default, arch.layer_indices, arch.num_experts, platform=StubPlatform([remote.addresses[2]])
    )
    in_function = [e for e in experts if e[1] in (0, 1)]
    planned = executor._compile(
        Placement(
            {
                **{a: [e for e in default.destinations[a] if e not in in_function] for a in remote.addresses[:2]},
                function_destination("f"): in_function,
            }
        ),
        {"f": 1024},
    )
    hidden = torch.randn(6, arch.hidden_size)  # [T, H]: rows 0-1 request a, 2-3 request b (planned), 4-5 c
    index = torch.tensor([[0, 2], [1, 3], [0, 5], [1, 4], [6, 7], [0, 3]])
    routing_weights = torch.rand(6, 2)
    bills = [FunctionBill(), FunctionBill(), FunctionBill()]
    rows = (
        RequestRows(2, "a", None, None, bills[0]),
        RequestRows(4, "b", None, planned, bills[1]),
        RequestRows(6, "c", None, None, bills[2]),
    )
    token = current_batch.set(rows)
    try:
        out = executor.compute(0, hidden, index, routing_weights)
    finally:
        current_batch.reset(token)
        executor.close()
    torch.testing.assert_close(out, LocalExpertExecutor(weights).compute(0, hidden, index, routing_weights))
    assert [v.Stats(None, None).batches for v in remote.servicers] == [1, 1, 1]
    assert bills[0] == bills[2] == FunctionBill() and bills[1].seconds["f"] > 0
    assert bills[1].calls == {"f": 1.0}  # one invocation, all of whose rows were b's
    # billed: the function's own time on the batch, as it reported it; the round trip around it is kept apart
    function_s = remote.servicers[2].Stats(None, None).compute_s
    assert bills[1].seconds["f"] == pytest.approx(function_s, rel=1e-12)
    assert bills[1].round_trip_s["f"] > function_s
