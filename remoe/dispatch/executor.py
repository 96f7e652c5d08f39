"""DispatchingExecutor: fans each MoE layer out to the destinations that host its routed experts.

Destinations: "local" (this process), an expert service's address, or "function:NAME" (a serverless
function, resolved to its replicas through the function platform). One message per remote destination
per layer, all in flight at once; the local experts are computed while the remote ones work; the
weighted partial sums are added. A function replica that fails is retried on another live replica, then
the batch goes to the fallback (an expert service, which loads any expert lazily); a batch an expert service
fails goes to the next service. T = tokens, K = top-k, H = hidden size.

Per-request plans and cold starts: a plan's experts that a running function already hosts go to that function
(no new function, no cold start); and by default a function that has no instance serving yet has its batches
computed on the fallback while it starts, so a cold start never sits on a token's critical path
(`cold_start="wait"` waits for it instead, as a bare serverless deployment would).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque

import grpc
import torch
from opentelemetry import propagate, trace

from remoe.dispatch.in_flight import FanoutSplit, InFlight
from remoe.dispatch.plan_reuse import reuse_running
from remoe.dispatch.routing import ROUTINGS_KEPT, Routing, bill_functions, current_routing
from remoe.experts.cache import ExpertId
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.placement import FUNCTION_PREFIX, LOCAL, Placement, function_destination
from remoe.experts.slot_split import split_rows_by_owner, split_slots
from remoe.platform.base import FunctionStartError
from remoe.platform.plan import check_functions
from remoe.proto import expert_pb2
from remoe.transport import tensor_codec
from remoe.transport.expert_stream import ExpertStream, RemoteExpertError
from remoe.transport.request_context import (
    current_batch,
    current_deadline,
    current_request_id,
    remaining,
    row_starts,
    status_from_int,
)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)
# Without a request deadline, a destination that accepted a batch still gets this long to answer.
DEFAULT_BATCH_TIMEOUT_S = 300.0
# Failures worth another replica or the fallback; bad input or a passed deadline would fail there too.
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}


COLD_START_POLICIES = ("fallback", "wait")


class FunctionNotReady(FunctionStartError):
    """The function has no instance serving yet (it is starting); its batch is computed elsewhere meanwhile."""


def _accumulate(out: torch.Tensor, rows: torch.Tensor, partial: torch.Tensor) -> None:
    """out[rows] += partial; a plain add when the partial covers every row (decode)."""
    if len(rows) == out.shape[0]:
        out.add_(partial)
    else:
        out.index_add_(0, rows, partial)


class DispatchingExecutor:
    computes_on_host = True  # an accelerator backbone hands it host tensors, copied once (model/host_staging.py)

    def __init__(
        self,
        placement: Placement,
        moe_layers: list[int],
        num_experts: int,
        local: LocalExpertExecutor | None = None,
        platform=None,
        fallback: str | None = None,
        cold_start: str = "fallback",
        local_plane: bool = False,
    ) -> None:
        """`local_plane`: send to expert services on this host through their co-located data plane."""
        if cold_start not in COLD_START_POLICIES:
            raise ValueError(f"cold_start must be one of {COLD_START_POLICIES}, got {cold_start!r}")
        self.moe_layers, self.num_experts = moe_layers, num_experts
        self.cold_start = cold_start
        self.local_plane = local_plane
        self.local = local
        self.platform = platform
        self.default = self._compile(placement, {})
        services = [d for d in self.destinations if d != LOCAL and not d.startswith(FUNCTION_PREFIX)]
        self.services = services
        self.fallback = fallback or (services[0] if services else (LOCAL if local is not None else None))
        self._streams: dict[str, ExpertStream] = {}
        self._streams_lock = threading.Lock()
        self._round_robin = itertools.count()
        self._routings: OrderedDict[tuple, Routing] = OrderedDict()
        self._routings_lock = threading.Lock()  # requests arrive on several server threads
        self.fanout_s: deque[float] = deque(maxlen=2048)  # wall time of recent remote fan-outs
        self.fanout_split: deque[FanoutSplit] = deque(maxlen=2048)  # where each of those went
        self.retries = 0
        self.fallbacks = 0
        self.cold_fallbacks = 0  # batches computed elsewhere while their function started
        self.failovers = 0  # batches an expert service failed and another one computed
        self.reused_experts = 0  # plan experts sent to a function that was already running

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
        return Routing(placement, destinations, owner, memory_mb, {layer: t.tolist() for layer, t in owner.items()})

    def routing_for(self, functions) -> Routing:
        """The routing of a request's plan: its functions (FunctionSpecs) take their experts — those a running
        function hosts go there, the rest to new functions deployed on the platform —, every other expert stays
        where the default placement has it."""
        if self.platform is None:
            raise ValueError("this backbone has no function platform, so it cannot run a plan's functions")
        check_functions(functions, self.moe_layers, self.num_experts)
        running = self.platform.running()
        new, reused = reuse_running(list(functions), running)
        key = (tuple(new), tuple((name, tuple(experts)) for name, experts in sorted(reused.items())))
        with self._routings_lock:
            routing = self._routings.get(key)
            if routing is not None:
                self._routings.move_to_end(key)
                self.reused_experts += sum(map(len, reused.values()))
                return routing
        remote = {function_destination(s.name): list(s.experts) for s in new}
        remote |= {function_destination(name): experts for name, experts in reused.items()}
        destinations = self._plan_destinations(remote)
        self.platform.ensure(new)
        memory_mb = {s.name: s.memory_mb for s in running if s.name in reused} | {s.name: s.memory_mb for s in new}
        routing = self._compile(Placement(destinations), memory_mb)
        with self._routings_lock:
            self._routings[key] = routing
            self.reused_experts += sum(map(len, reused.values()))
            while len(self._routings) > ROUTINGS_KEPT:
                self._routings.popitem(last=False)
        return routing

    def _plan_destinations(self, remote: dict[str, list[ExpertId]]) -> dict[str, list[ExpertId]]:
        """A plan's destinations: its functions (`remote`: destination -> experts) take their experts, the others
        stay where the default placement has them (one the default put in a function goes to the fallback)."""
        planned = {expert for experts in remote.values() for expert in experts}
        destinations: dict[str, list[ExpertId]] = {}
        for expert, dest in self.default.placement.owner_table().items():
            if expert not in planned:
                local = dest if not dest.startswith(FUNCTION_PREFIX) else self.fallback
                destinations.setdefault(local, []).append(expert)
        return destinations | remote

    @property
    def streams(self) -> dict[str, ExpertStream]:
        """Expert-service streams by address (functions' replica streams are not listed)."""
        return {d: self._stream(d) for d in self.destinations if d != LOCAL and not d.startswith(FUNCTION_PREFIX)}

    def _stream(self, address: str) -> ExpertStream:
        with self._streams_lock:
            stream = self._streams.get(address)
            if stream is None:
                stream = self._streams[address] = ExpertStream(address, self.local_plane)
            return stream

    def compute(
        self, layer: int, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        if not trace.get_current_span().is_recording():  # tracing off: a no-op span still costs ~10 µs a layer
            return self._compute(layer, hidden_states, top_k_index, top_k_weights)
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
        requests = current_batch.get()  # a batched step: the requests behind the rows
        routing, parts = self._split(layer, index, weights, requests)
        out = torch.zeros_like(hidden)  # [T, H]
        in_flight: list[InFlight] = []
        local_job = None
        span = trace.get_current_span()
        carrier: dict[str, str] = {}
        if span.is_recording():
            propagate.inject(carrier)  # only when tracing is on: inject costs microseconds per layer
        hidden_msg = None  # the hidden states encoded once, for every destination that takes all rows
        for part in parts:
            dest = routing.destinations[part.number]
            rows = part.rows
            if dest == LOCAL:
                local_job = (rows, part.index, part.weights)
                continue
            if not part.all_rows:
                encoded = tensor_codec.encode(hidden[rows])
            else:
                if hidden_msg is None:
                    hidden_msg = tensor_codec.encode(hidden)
                encoded = hidden_msg
            index_msg, weights_msg = part.messages()
            batch = expert_pb2.ExpertBatch(
                request_id=current_request_id.get(),
                layer=layer,
                hidden_states=encoded,
                top_k_index=index_msg,
                top_k_weights=weights_msg,
                deadline_unix_s=current_deadline.get() or 0.0,
                trace_context=carrier,
            )
            try:
                in_flight.append(self._send(dest, rows, batch))
            except FunctionStartError as e:  # starting, or cannot start (no room, bad spec): compute elsewhere
                if self.fallback is None or not dest.startswith(FUNCTION_PREFIX):
                    raise
                if isinstance(e, FunctionNotReady):
                    self.cold_fallbacks += 1
                else:
                    self.fallbacks += 1
                    log.warning("%s cannot start (%s); computing its batch on %s", dest, e, self.fallback)
                if self.fallback == LOCAL:
                    partial = self.local.compute(layer, hidden[rows], part.index, part.weights, guest=True)
                    _accumulate(out, rows, partial)
                else:
                    batch.guest = True  # the function's experts: the service lets them go once it serves
                    in_flight.append(self._send(self.fallback, rows, batch))
        sent = time.perf_counter()
        if local_job is not None:
            rows, sub_index, sub_weights = local_job
            _accumulate(out, rows, self.local.compute(layer, hidden[rows], sub_index, sub_weights))
        local_done = time.perf_counter()
        for job in in_flight:
            _accumulate(out, job.rows, self._await(job, hidden))
            if job.dest.startswith(FUNCTION_PREFIX):
                # A function bills its handler's time on the batch, not the round trip: once it has answered it
                # is idle, however long the answer waits here behind this process's own experts.
                round_trip = (job.done_s or time.perf_counter()) - job.sent_s
                seconds = job.server_s if job.server_s > 0 else round_trip  # 0: a function that reports none
                bill_functions(job.dest.removeprefix(FUNCTION_PREFIX), seconds, round_trip, job.rows, requests)
        if in_flight:
            end = time.perf_counter()
            self.fanout_s.append(end - start)
            server = max(job.server_s for job in in_flight)
            self.fanout_split.append(FanoutSplit(sent - start, local_done - sent, end - local_done, server))
        return out.to(hidden_states.device, hidden_states.dtype)

    def _split(self, layer: int, index: torch.Tensor, weights: torch.Tensor, batch) -> tuple[Routing, list]:
        """The layer's slots by destination, under the routing of the request(s) whose rows these are."""
        if batch is None:
            routing = current_routing.get() or self.default
        elif len({id(group.routing) for group in batch}) == 1:
            routing = batch[0].routing or self.default
        else:  # a batched step of requests with different plans: one destination list, owners per row
            return self._mixed_split(layer, index, weights, batch)
        return routing, split_slots(routing.owner[layer], routing.owner_lists[layer], index, weights)

    def _mixed_split(self, layer: int, index: torch.Tensor, weights: torch.Tensor, batch) -> tuple[Routing, list]:
        number: dict[str, int] = {}
        owner_rows = []
        for start, group in zip(row_starts(batch), batch, strict=True):
            routing = group.routing or self.default
            renumber = torch.tensor([number.setdefault(d, len(number)) for d in routing.destinations])
            owner_rows.append(renumber[routing.owner[layer]].expand(group.stop - start, -1))  # [n, E]
        merged = Routing(self.default.placement, list(number), {}, {})  # only its destination list is read
        return merged, split_rows_by_owner(torch.cat(owner_rows), index, weights)

    def _send(self, dest: str, rows: torch.Tensor, batch: expert_pb2.ExpertBatch, avoid: str = "") -> InFlight:
        address = self._pick_address(dest, avoid)
        sent = time.perf_counter()
        _, pending = self._stream(address).submit(batch)
        return InFlight(dest, rows, batch, address, pending, sent)

    def _pick_address(self, dest: str, avoid: str = "") -> str:
        if not dest.startswith(FUNCTION_PREFIX):
            return dest
        name = dest.removeprefix(FUNCTION_PREFIX)
        live = [(r, a) for r, a in self.platform.live_endpoints(name) if a != avoid]
        if not live:  # scale from zero (or every live replica just failed)
            if avoid:
                raise RemoteExpertError(grpc.StatusCode.UNAVAILABLE, f"function {name}: no other live replica")
            if self.cold_start == "fallback" and self.fallback is not None:
                self.platform.warm([name], bounded=True)  # starts it in the background; no-op while starting
                raise FunctionNotReady(f"function {name} is starting")
            addresses = self.platform.endpoints(name, timeout_s=remaining(DEFAULT_BATCH_TIMEOUT_S))
            live = list(enumerate(addresses))
        replica, address = live[next(self._round_robin) % len(live)]
        self.platform.touch(name, replica)
        return address

    def _result(self, job: InFlight) -> torch.Tensor:
        try:
            result = job.pending.result(timeout=remaining(DEFAULT_BATCH_TIMEOUT_S))
        except RemoteExpertError as e:
            if e.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            raise RemoteExpertError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{job.dest} ({job.address}) did not answer before the deadline"
            ) from None
        job.done_s = time.perf_counter()
        job.server_s = result.compute_s
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

    def _await(self, job: InFlight, hidden: torch.Tensor) -> torch.Tensor:
        try:
            return self._result(job)
        except RemoteExpertError as e:
            if e.code not in _RETRYABLE:
                raise
            if not job.dest.startswith(FUNCTION_PREFIX):
                return self._failover(job, e)
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
            return self.local.compute(job.batch.layer, hidden[job.rows], index, weights, guest=True)
        job.batch.guest = True
        return self._result(self._send(self.fallback, job.rows, job.batch))

    def _failover(self, job: InFlight, error: RemoteExpertError) -> torch.Tensor:
        """An expert service failed a batch (it died, or is restarting): the other services each load any expert
        lazily, so the next one computes it; only when every one fails does the request fail, with the status."""
        job.batch.guest = True  # the failed service's experts: the next one keeps them while they are used
        for other in self.services:
            if other == job.address:
                continue
            self.failovers += 1
            log.warning("%s failed (%s); computing its batch on %s", job.address, error, other)
            trace.get_current_span().add_event("service_failover", {"remoe.failed": job.address, "remoe.to": other})
            try:
                return self._result(self._send(other, job.rows, job.batch))
            except RemoteExpertError as e:
                if e.code not in _RETRYABLE:
                    raise
                error = e
        raise error

    def close(self) -> None:
        with self._streams_lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.close()
