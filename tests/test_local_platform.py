"""The local function platform with real function processes: scale from zero, replicas, scale to zero,
memory sizes, cold-start records."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from remoe.checkpoint.weights import open_weights
from remoe.constants import MIN_FUNCTION_MEMORY_MB
from remoe.experts.executor import LocalExpertExecutor
from remoe.platform.base import FunctionSpec, FunctionStartError
from remoe.platform.local import LocalFunctionPlatform
from remoe.proto import expert_pb2, expert_pb2_grpc
from remoe.transport import tensor_codec
from remoe.transport.expert_stream import ExpertStream

pytestmark = pytest.mark.processes  # starts function processes


def _compute(address: str, layer: int, hidden, index, weights):
    stream = ExpertStream(address)
    try:
        batch = expert_pb2.ExpertBatch(
            layer=layer,
            hidden_states=tensor_codec.encode(hidden),
            top_k_index=tensor_codec.encode(index),
            top_k_weights=tensor_codec.encode(weights),
        )
        result = stream.submit(batch)[1].result(timeout=60)
        assert result.status_code == 0, result.error
        return tensor_codec.decode(result.output).clone()
    finally:
        stream.close()


def _stats(address: str) -> expert_pb2.StatsReply:
    return expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(address)).Stats(
        expert_pb2.StatsRequest(), timeout=10
    )


@pytest.fixture
def platform(tiny_model, tmp_path):
    p = LocalFunctionPlatform(tiny_model("mixtral"), tmp_path, idle_ttl_s=60.0)
    yield p
    p.close()


def test_functions_start_on_demand_with_replicas_and_compute_right(platform, tiny_model):
    weights = open_weights(tiny_model("mixtral"))
    platform.deploy(
        [
            FunctionSpec("layer1-cold", experts=((1, 6), (1, 7)), memory_mb=2048, replicas=2),
            FunctionSpec("layer2-cold", experts=((2, 0),), memory_mb=2048),
        ]
    )
    assert {s.state for s in platform.status()} == {"cold"}
    replicas = platform.endpoints("layer1-cold", timeout_s=120)
    assert len(replicas) == 2 and len(set(replicas)) == 2
    hidden = torch.randn(3, weights.arch.hidden_size)
    index = torch.tensor([[6, 7], [7, -1], [-1, 6]])
    routing = torch.rand(3, 2)
    expected = LocalExpertExecutor(weights).compute(1, hidden, index, routing)
    for address in replicas:
        torch.testing.assert_close(_compute(address, 1, hidden, index, routing), expected, rtol=0, atol=1e-6)
        stats = _stats(address)
        assert stats.kind == "function" and stats.cold_start.complete
        assert stats.cold_start.imports_s > 0 and stats.cold_start.first_compute_s > 0
        assert {(r.layer, r.expert) for r in stats.resident} == {(1, 6), (1, 7)}  # loaded lazily, only these
    states = {(s.function, s.replica): s.state for s in platform.status()}
    assert states == {("layer1-cold", 0): "warm", ("layer1-cold", 1): "warm", ("layer2-cold", 0): "cold"}
    assert [r.function for r in platform.cold_starts] == ["layer1-cold", "layer1-cold"]


def test_idle_instances_scale_to_zero_and_cold_start_again(platform, tiny_model):
    platform.idle_ttl_s = 2.0
    weights = open_weights(tiny_model("mixtral"))
    platform.deploy([FunctionSpec("f", experts=((0, 1),), memory_mb=2048)])
    first = platform.endpoints("f")[0]
    hidden, index, routing = torch.randn(1, weights.arch.hidden_size), torch.tensor([[1]]), torch.ones(1, 1)
    before = _compute(first, 0, hidden, index, routing)
    deadline = time.monotonic() + 30
    while platform.status()[0].state != "cold":
        assert time.monotonic() < deadline, "the idle instance was not stopped"
        time.sleep(0.2)
    again = platform.endpoints("f")[0]
    torch.testing.assert_close(_compute(again, 0, hidden, index, routing), before, rtol=0, atol=0)
    assert platform.status()[0].cold_starts == 2
    assert len(platform.cold_starts) == 2


def test_too_little_memory_fails_cleanly_with_the_reason(platform):
    platform.deploy([FunctionSpec("tiny-mem", experts=((0, 1),), memory_mb=MIN_FUNCTION_MEMORY_MB)])
    with pytest.raises(FunctionStartError, match=rf"memory size {MIN_FUNCTION_MEMORY_MB} MiB is too small"):
        platform.endpoints("tiny-mem", timeout_s=120)
    assert "too small" in platform.status()[0].last_error


def test_a_killed_instance_is_restarted_on_next_use(platform):
    platform.deploy([FunctionSpec("f", experts=((0, 1),), memory_mb=2048)])
    platform.endpoints("f")
    platform.kill("f", 0)
    assert platform.status()[0].state == "cold"
    assert platform.endpoints("f")
    assert platform.status()[0].cold_starts == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "Bad_Name"}, "DNS label"),
        ({"experts": ()}, "hosts no experts"),
        ({"memory_mb": 10}, "below 128"),
        ({"replicas": 0}, "replicas"),
    ],
)
def test_bad_function_specs_are_named(kwargs, message):
    fields = {"name": "f", "experts": ((0, 1),), "memory_mb": 512, **kwargs}
    with pytest.raises(ValueError, match=message):
        FunctionSpec(**fields)


def test_instances_stay_within_the_memory_budget_least_recently_used_first(tiny_model, tmp_path):
    platform = LocalFunctionPlatform(tiny_model("mixtral"), tmp_path, idle_ttl_s=60.0, memory_budget_mb=2048)
    try:
        platform.deploy([FunctionSpec(f"f{i}", experts=((1, i),), memory_mb=1024) for i in range(3)])
        platform.endpoints("f0", timeout_s=120)
        platform.endpoints("f1", timeout_s=120)
        platform.endpoints("f2", timeout_s=120)  # no room for a third: f0, used longest ago, stops
        states = {s.function: s.state for s in platform.status()}
        assert states == {"f0": "cold", "f1": "warm", "f2": "warm"} and platform.evictions == 1
        big = FunctionSpec("big", experts=((1, 3),), memory_mb=4096)
        platform.ensure([big])
        with pytest.raises(FunctionStartError, match="memory budget of 2048 MB"):
            platform.endpoints("big", timeout_s=120)  # larger than the whole budget: refused, nothing stopped
        assert {s.function: s.state for s in platform.status()}["f1"] == "warm" and platform.evictions == 1
    finally:
        platform.close()


def test_a_failed_start_is_not_retried_at_once(platform):
    platform.deploy([FunctionSpec("tiny-mem", experts=((0, 1),), memory_mb=MIN_FUNCTION_MEMORY_MB)])
    with pytest.raises(FunctionStartError, match="too small"):
        platform.endpoints("tiny-mem", timeout_s=120)
    with pytest.raises(FunctionStartError, match="too small"):  # every batch routed there would spawn another
        platform.endpoints("tiny-mem", timeout_s=120)
    assert platform.status()[0].cold_starts == 1


def test_plans_reuse_running_functions_and_never_wait_for_a_cold_start(platform, tiny_model):
    """Two requests' plans through the dispatcher and real function processes: the second plan's experts that the
    first one's function hosts go to it (no new function); a function still starting has its batch computed
    locally meanwhile; every result is exact."""
    from remoe.dispatch.executor import DispatchingExecutor
    from remoe.dispatch.routing import current_routing
    from remoe.experts.placement import LOCAL, Placement

    weights = open_weights(tiny_model("mixtral"))
    arch = weights.arch
    local = LocalExpertExecutor(weights)
    everything = [(layer, e) for layer in arch.layer_indices for e in range(arch.num_experts)]
    executor = DispatchingExecutor(
        Placement({LOCAL: everything}), arch.layer_indices, arch.num_experts, local=local, platform=platform
    )
    hidden, index, routing = torch.randn(3, arch.hidden_size), torch.tensor([[6, 7], [5, 6], [0, 7]]), torch.rand(3, 2)
    expected = local.compute(1, hidden, index, routing)

    def compute(plan):
        token = current_routing.set(executor.routing_for(plan))
        try:
            return executor.compute(1, hidden, index, routing)
        finally:
            current_routing.reset(token)

    first = [FunctionSpec("first", experts=((1, 6), (1, 7)), memory_mb=2048)]
    torch.testing.assert_close(compute(first), expected, rtol=0, atol=1e-6)  # "first" is starting: computed here
    # Not waited for: its batch was computed here while the platform started it (one start, one fallback).
    assert executor.cold_fallbacks == 1 and [s.cold_starts for s in platform.status()] == [1]
    platform.endpoints("first", timeout_s=120)  # now it serves

    second = [FunctionSpec("second", experts=((1, 5), (1, 6), (1, 7)), memory_mb=2048)]
    torch.testing.assert_close(compute(second), expected, rtol=0, atol=1e-6)
    names = {s.function for s in platform.status()}
    assert "second" not in names and len(names) == 2, "only expert 5 needs a new function"
    assert executor.reused_experts == 2
    assert {s.function: s.calls for s in platform.status()}["first"] == 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_functions_exit_when_the_process_that_started_them_is_killed(tiny_model, tmp_path):
    """A backbone killed hard (SIGKILL, no clean-up) must not leave its function processes running."""
    import subprocess
    import sys

    script = f"""
import os, signal
from remoe.platform.base import FunctionSpec
from remoe.platform.local import LocalFunctionPlatform

p = LocalFunctionPlatform({str(tiny_model("mixtral"))!r}, {str(tmp_path)!r})
p.deploy([FunctionSpec("orphan", experts=((0, 1),), memory_mb=2048)])
p.endpoints("orphan", timeout_s=120)
print(open({str(tmp_path / "orphan-0.pid")!r}).read(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert run.returncode == -9, run.stderr
    pid = int(run.stdout.strip())
    deadline = time.monotonic() + 15
    while _alive(pid):
        assert time.monotonic() < deadline, f"function process {pid} outlived its parent"
        time.sleep(0.1)


def _environ_names(pid: int) -> set[str]:
    """The environment a process was started with (a forked one: its template's)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        return {entry.split(b"=", 1)[0].decode() for entry in f.read().split(b"\0") if entry}


@pytest.mark.parametrize("runtime", ["process", "fork"])
def test_a_function_gets_only_what_it_needs_from_the_environment(runtime, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("REMOE_GATEWAY_AUTH_TOKEN", "do-not-leak")
    monkeypatch.setenv("REMOE_PREDICTOR_REDIS_URL", "redis://secret@host/0")
    platform = LocalFunctionPlatform(tiny_model("mixtral"), tmp_path, runtime=runtime)
    try:
        platform.deploy([FunctionSpec("f", experts=((0, 1),), memory_mb=2048)])
        address = platform.endpoints("f", timeout_s=120)[0]
        pid = int((platform.run_dir / "f-0.pid").read_text())
        secrets = {"REMOE_GATEWAY_AUTH_TOKEN", "REMOE_PREDICTOR_REDIS_URL"}
        assert not secrets & _environ_names(pid) and "PATH" in _environ_names(pid)
        if runtime == "process":
            assert {"REMOE_MODEL_DIR", "REMOE_FUNCTION_EXPERTS"} <= _environ_names(pid)
        else:  # the template's environment had neither secret; the instance's own settings reached it
            assert not secrets & _environ_names(platform._launcher().pid)
            hidden = torch.randn(1, open_weights(tiny_model("mixtral")).arch.hidden_size)
            _compute(address, 0, hidden, torch.tensor([[1]]), torch.ones(1, 1))
            assert {(r.layer, r.expert) for r in _stats(address).resident} == {(0, 1)}
    finally:
        platform.close()


def test_a_requests_plan_starts_at_most_max_starting_instances_at_once(tiny_model, tmp_path):
    """Each start costs seconds of this machine's CPU: plans that bring many new functions start them a few at a
    time (the others' batches run on an expert service meanwhile); the Warm RPC's starts are not bounded."""
    platform = LocalFunctionPlatform(tiny_model("mixtral"), tmp_path, max_starting=1)
    try:
        platform.deploy([FunctionSpec(f"f{i}", experts=((1, i),), memory_mb=1024) for i in range(3)])
        platform.warm(["f0", "f1", "f2"], bounded=True)
        # Started or not, whatever the start's speed (its state may already be warm): one start, two skipped.
        assert sorted(s.cold_starts for s in platform.status()) == [0, 0, 1] and platform.skipped_starts == 2
        platform.warm(["f1", "f2"])  # unbounded
        assert [s.cold_starts for s in platform.status()] == [1, 1, 1]
    finally:
        platform.close()


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_instances_fork_from_the_template_and_start_plain_when_it_is_gone(platform, tiny_model):
    """The default runtime forks every instance from one pre-imported template; if the template dies, its instances
    end with it, a crashed replica is replaced by a plain process, and results stay exact."""
    import os
    import signal

    weights = open_weights(tiny_model("mixtral"))
    hidden, index, routing = torch.randn(2, weights.arch.hidden_size), torch.tensor([[1], [2]]), torch.ones(2, 1)
    expected = LocalExpertExecutor(weights).compute(0, hidden, index, routing)
    platform.deploy([FunctionSpec("f", experts=((0, 1), (0, 2)), memory_mb=2048, replicas=2)])
    addresses = platform.endpoints("f", timeout_s=120)
    template = platform._launcher().pid
    pids = [int((platform.run_dir / f"f-{r}.pid").read_text()) for r in range(2)]
    assert [_parent_of(pid) for pid in pids] == [template, template]
    torch.testing.assert_close(_compute(addresses[0], 0, hidden, index, routing), expected, rtol=0, atol=1e-6)

    os.kill(template, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) or platform.live_endpoints("f"):
        assert time.monotonic() < deadline, "the instances outlived their template"
        time.sleep(0.1)
    replaced = platform.endpoints("f", timeout_s=120)  # plain processes now: the platform's own children
    new_pids = [int((platform.run_dir / f"f-{r}.pid").read_text()) for r in range(2)]
    assert [_parent_of(pid) for pid in new_pids] == [os.getpid(), os.getpid()]
    assert {s.crashes for s in platform.status()} == {1}
    torch.testing.assert_close(_compute(replaced[1], 0, hidden, index, routing), expected, rtol=0, atol=1e-6)


def _children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def test_a_start_still_works_when_the_templates_spare_child_died(platform, tiny_model):
    """The template keeps a child forked ahead for the next start; if that child is killed while it waits, the next
    start goes to a new spare or a fresh fork, not to the dead one."""
    import os
    import signal

    platform.wait_runtime()
    template = platform._launcher().pid
    (spare,) = _children_of(template)  # no instance yet: the only child is the spare
    os.kill(spare, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(spare):  # dead (a zombie until the template collects it) before the next start is asked for
        assert time.monotonic() < deadline
        time.sleep(0.01)
    platform.deploy([FunctionSpec("f", experts=((0, 1),), memory_mb=2048)])
    address = platform.endpoints("f", timeout_s=60)[0]
    assert _parent_of(int((platform.run_dir / "f-0.pid").read_text())) == template
    weights = open_weights(tiny_model("mixtral"))
    hidden, index, routing = torch.randn(1, weights.arch.hidden_size), torch.tensor([[1]]), torch.ones(1, 1)
    expected = LocalExpertExecutor(weights).compute(0, hidden, index, routing)
    torch.testing.assert_close(_compute(address, 0, hidden, index, routing), expected, rtol=0, atol=1e-6)
