"""DispatchingExecutor: fans each MoE layer out to the destinations that host its routed experts.

Destinations: "local" (this process), an expert service's address, or "function:NAME" (a serverless
function, resolved to its replicas through the function platform). One message per remote destination
per layer, all in flight at once; the local experts are computed while the remote ones work; the
weighted partial sums are added. A function replica that fails is retried on another live replica, then
the batch goes to the fallback (an expert service, which loads any expert lazily). T = tokens, K = top-k,
H = hidden size.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from dataclasses import dataclass

import grpc
import torch
from opentelemetry import propagate, trace

from remoe.experts.cache import ExpertId
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.placement import LOCAL, Placement
from remoe.platform.base import FunctionStartError
from remoe.proto import expert_pb2
from remoe.transport import tensor_codec
from remoe.transport.expert_stream import ExpertStream, RemoteExpertError
from remoe.transport.request_context import current_deadline, current_request_id, remaining, status_from_int

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
FUNCTION_PREFIX = "function:"
# Without a request deadline, a destination that accepted a batch still gets this long to answer.
DEFAULT_BATCH_TIMEOUT_S = 300.0
# Failures worth another replica or the fallback; bad input or a passed deadline would fail there too.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}


def function_destination(name: str) -> str:
    return f"{FUNCTION_PREFIX}{name}"


@dataclass
class _InFlight:
    dest: str
    rows: torch.Tensor  # [N] token rows this destination computes
    batch: expert_pb2.ExpertBatch
    address: str
    seq: int
    future: Future
    sent_s: float = 0.0
    done_s: float = 0.0  # set when the answer arrives (from the stream's reader thread)


@dataclass(frozen=True)
class Routing:
    """One placement compiled for dispatch: every expert's destination number, per layer."""

    placement: Placement
    destinations: list[str]
    owner: dict[int, torch.Tensor]  # layer -> [E] destination number of each expert
    memory_mb: dict[str, int]  # function name -> its memory size (for metering)


# A request's own routing (the scheduler's plan) and where its functions' billed seconds accumulate.
current_routing: ContextVar[Routing | None] = ContextVar("remoe_routing", default=None)
current_function_seconds: ContextVar[dict[str, float] | None] = ContextVar("remoe_function_seconds", default=None)
ROUTINGS_KEPT = 256


class DispatchingExecutor:
    def __init__(
        self,
        placement: Placement,
        moe_layers: list[int],
        num_experts: int,
        local: LocalExpertExecutor | None = None,
        platform=None,
        fallback: str | None = None,
    ) -> None:
        self.moe_layers, self.num_experts = moe_layers, num_experts
        self.local = local
        self.platform = platform
        self.default = self._compile(placement, {})
        services = [d for d in self.destinations if d != LOCAL and not d.startswith(FUNCTION_PREFIX)]
        self.fallback = fallback or (services[0] if services else (LOCAL if local is not None else None))
        self._streams: dict[str, ExpertStream] = {}
        self._streams_lock = threading.Lock()
        self._round_robin = itertools.count()
        self._routings: OrderedDict[tuple, Routing] = OrderedDict()
        self._routings_lock = threading.Lock()  # requests arrive on several server threads
        self.fanout_s: deque[float] = deque(maxlen=2048)  # wall time of recent remote fan-outs
        self.retries = 0
        self.fallbacks = 0

    @property
    def placement(self) -> Placement:
        return self.default.placement

    @property
    def destinations(self) -> list[str]:
        return self.default.destinations

    def _compile(self, placement: Placement, memory_mb: dict[str, int]) -> Routing:
        placement.check_covers(self.moe_layers, self.num_experts)
        if LOCAL in placement.destinations and self.local is None:
            raise ValueError("the placement puts experts on 'local' but no local executor was given")
        functions = [d for d in placement.destinations if d.startswith(FUNCTION_PREFIX)]
        if functions and self.platform is None:
            raise ValueError(f"the placement uses functions {functions} but no function platform was given")
        destinations = list(placement.destinations)
        owners = placement.owner_table()
        # Per layer: destination number of every expert, so a slot's destination is one gather away.
        owner = {
            layer: torch.tensor([destinations.index(owners[(layer, e)]) for e in range(self.num_experts)])
            for layer in self.moe_layers
        }
        return Routing(placement, destinations, owner, memory_mb)

    def routing_for(self, functions) -> Routing:
        """The routing of a request's plan: its functions (FunctionSpecs, deployed on the platform if new)
        take their experts, every other expert stays where the default placement has it."""
        key = tuple(functions)
        with self._routings_lock:
            routing = self._routings.get(key)
            if routing is not None:
                self._routings.move_to_end(key)
                return routing
        if self.platform is None:
            raise ValueError("this backbone has no function platform, so it cannot run a plan's functions")
        remote: dict[ExpertId, str] = {}
        for spec in functions:
            for expert in spec.experts:
                if expert in remote:
                    raise ValueError(f"expert {expert} is in both {remote[expert]} and {spec.name}")
                if expert[0] not in self.moe_layers or not 0 <= expert[1] < self.num_experts:
                    raise ValueError(f"function {spec.name}: expert {expert} is not in the model")
                remote[expert] = spec.name
        owners = self.default.placement.owner_table()
        destinations: dict[str, list[ExpertId]] = {}
        for expert, dest in owners.items():
            if expert not in remote and not dest.startswith(FUNCTION_PREFIX):
                destinations.setdefault(dest, []).append(expert)
            elif expert not in remote:  # the default put it in a function the plan does not have
                destinations.setdefault(self.fallback, []).append(expert)
        for spec in functions:
            destinations[function_destination(spec.name)] = list(spec.experts)
        self.platform.ensure(list(functions))
        routing = self._compile(Placement(destinations), {s.name: s.memory_mb for s in functions})
        with self._routings_lock:
            self._routings[key] = routing
            while len(self._routings) > ROUTINGS_KEPT:
                self._routings.popitem(last=False)
        return routing

    @property
    def streams(self) -> dict[str, ExpertStream]:
        """Expert-service streams by address (functions' replica streams are not listed)."""
        return {d: self._stream(d) for d in self.destinations if d != LOCAL and not d.startswith(FUNCTION_PREFIX)}

    def _stream(self, address: str) -> ExpertStream:
        with self._streams_lock:
            stream = self._streams.get(address)
            if stream is None:
                stream = self._streams[address] = ExpertStream(address)
            return stream

    def compute(
        self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        with _tracer.start_as_current_span("expert_fanout") as span:
            span.set_attribute("remoe.layer", layer)
            return self._compute(layer, hidden_states, top_k_index, top_k_weights)

    def _compute(
        self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        start = time.perf_counter()
        hidden = hidden_states.to("cpu")  # [T, H]
        index = top_k_index.to("cpu")  # [T, K]
        weights = top_k_weights.to("cpu", hidden.dtype)  # [T, K]
        routing = current_routing.get() or self.default
        dest_of_slot = routing.owner[layer][index]  # [T, K]
        out = torch.zeros_like(hidden)  # [T, H]
        in_flight: list[_InFlight] = []
        local_job = None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # empty unless tracing is on
        for number, dest in enumerate(routing.destinations):
            mine = dest_of_slot == number  # [T, K]
            if not bool(mine.any()):
                continue
            rows = mine.any(dim=1).nonzero().flatten()  # [N]
            sub_index = torch.where(mine, index, -1)[rows]  # [N, K]
            sub_weights = torch.where(mine, weights, 0.0)[rows]  # [N, K]
            if dest == LOCAL:
                local_job = (rows, sub_index, sub_weights)
                continue
            batch = expert_pb2.ExpertBatch(
                request_id=current_request_id.get(),
                layer=layer,
                hidden_states=tensor_codec.encode(hidden[rows]),
                top_k_index=tensor_codec.encode(sub_index),
                top_k_weights=tensor_codec.encode(sub_weights),
                deadline_unix_s=current_deadline.get() or 0.0,
                trace_context=carrier,
            )
            try:
                in_flight.append(self._send(dest, rows, batch))
            except FunctionStartError as e:  # the function cannot start (no room, bad spec): compute elsewhere
                if self.fallback is None or not dest.startswith(FUNCTION_PREFIX):
                    raise
                self.fallbacks += 1
                log.warning("%s cannot start (%s); computing its batch on %s", dest, e, self.fallback)
                if self.fallback == LOCAL:
                    out.index_add_(0, rows, self.local.compute(layer, hidden[rows], sub_index, sub_weights))
                else:
                    in_flight.append(self._send(self.fallback, rows, batch))
        if local_job is not None:
            rows, sub_index, sub_weights = local_job
            out.index_add_(0, rows, self.local.compute(layer, hidden[rows], sub_index, sub_weights))
        billed = current_function_seconds.get()
        for job in in_flight:
            out.index_add_(0, job.rows, self._await(job, hidden))
            if billed is not None and job.dest.startswith(FUNCTION_PREFIX):
                name = job.dest.removeprefix(FUNCTION_PREFIX)  # a function bills its batches' round trips
                billed[name] = billed.get(name, 0.0) + (job.done_s or time.perf_counter()) - job.sent_s
        if in_flight:
            self.fanout_s.append(time.perf_counter() - start)
        return out.to(hidden_states.device, hidden_states.dtype)

    def _send(self, dest: str, rows: torch.Tensor, batch: expert_pb2.ExpertBatch, avoid: str = "") -> _InFlight:
        address = self._pick_address(dest, avoid)
        sent = time.perf_counter()
        seq, future = self._stream(address).submit(batch)
        job = _InFlight(dest, rows, batch, address, seq, future, sent)
        future.add_done_callback(lambda _: setattr(job, "done_s", time.perf_counter()))
        return job

    def _pick_address(self, dest: str, avoid: str = "") -> str:
        if not dest.startswith(FUNCTION_PREFIX):
            return dest
        name = dest.removeprefix(FUNCTION_PREFIX)
        live = [(r, a) for r, a in self.platform.live_endpoints(name) if a != avoid]
        if not live:  # scale from zero (or every live replica just failed): start and wait
            if avoid:
                raise RemoteExpertError(grpc.StatusCode.UNAVAILABLE, f"function {name}: no other live replica")
            addresses = self.platform.endpoints(name, timeout_s=remaining(DEFAULT_BATCH_TIMEOUT_S))
            live = list(enumerate(addresses))
        replica, address = live[next(self._round_robin) % len(live)]
        self.platform.touch(name, replica)
        return address

    def _result(self, job: _InFlight) -> torch.Tensor:
        try:
            result = job.future.result(timeout=remaining(DEFAULT_BATCH_TIMEOUT_S))
        except FutureTimeout:
            self._stream(job.address).forget(job.seq)
            raise RemoteExpertError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{job.dest} ({job.address}) did not answer before the deadline"
            ) from None
        if result.status_code != 0:
            raise RemoteExpertError(status_from_int(result.status_code), f"{job.dest} ({job.address}): {result.error}")
        try:
            wire = job.batch.hidden_states.dtype  # the answer comes back in the dtype it was sent in
            partial = tensor_codec.decode(result.output, f"output from {job.address}", dtype=wire, rank=2)
        except tensor_codec.TensorDecodeError as e:
            raise RemoteExpertError(grpc.StatusCode.INTERNAL, str(e)) from None
        if tuple(partial.shape) != (len(job.rows), job.batch.hidden_states.shape[1]):
            raise RemoteExpertError(grpc.StatusCode.INTERNAL, f"{job.address} answered shape {list(partial.shape)}")
        return partial

    def _await(self, job: _InFlight, hidden: torch.Tensor) -> torch.Tensor:
        try:
            return self._result(job)
        except RemoteExpertError as e:
            if not job.dest.startswith(FUNCTION_PREFIX) or e.code not in _RETRYABLE:
                raise
            first_error = e
        span = trace.get_current_span()
        log.warning("%s failed (%s); retrying on another replica", job.address, first_error)
        try:
            self.retries += 1
            span.add_event("function_retry", {"remoe.function": job.dest, "remoe.error": str(first_error)})
            return self._result(self._send(job.dest, job.rows, job.batch, avoid=job.address))
        except RemoteExpertError as e:
            if e.code not in _RETRYABLE or self.fallback is None:
                raise
        self.fallbacks += 1
        span.add_event("function_fallback", {"remoe.function": job.dest, "remoe.fallback": self.fallback})
        log.warning("%s: every replica failed; computing its batch on %s", job.dest, self.fallback)
        if self.fallback == LOCAL:
            index = tensor_codec.decode(job.batch.top_k_index)
            weights = tensor_codec.decode(job.batch.top_k_weights)
            return self.local.compute(job.batch.layer, hidden[job.rows], index, weights)
        return self._result(self._send(self.fallback, job.rows, job.batch))

    def close(self) -> None:
        with self._streams_lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.close()
