"""Backbone service: the model's non-expert part; each MoE layer fans out to the expert services.

    python -m remoe.services.backbone --model DIR --experts 127.0.0.1:50061,127.0.0.1:50062
Without --experts every routed expert runs in this process.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from contextlib import nullcontext
from pathlib import Path

import grpc
import numpy as np
from opentelemetry import context as otel_context

from remoe.checkpoint.dtypes import resolve_dtype
from remoe.checkpoint.weights import open_weights
from remoe.dispatch.executor import DispatchingExecutor
from remoe.dispatch.routing import current_function_bill, current_routing
from remoe.errors import RemoeError
from remoe.experts.executor import LocalExpertExecutor
from remoe.experts.placement import LOCAL
from remoe.metrics.exposition import serve_metrics
from remoe.metrics.services import backbone_registry
from remoe.model.activations import ActivationRecorder, current_recorder
from remoe.model.backbone import Backbone
from remoe.model.batch_engine import BatchEngine
from remoe.model.batch_request import BatchRequest, BatchSettings, DeadlinePassed, RequestCancelled
from remoe.model.generation import GenerationTrace, SamplingParams, generate_tokens
from remoe.model.messages import activation_summary, add_batch_usage, sampling_from_proto, token_chunk
from remoe.model.step_cache import batching_unsupported
from remoe.model.tokenizer import eos_token_ids
from remoe.platform.base import FunctionStartError
from remoe.platform.factory import platform_from_settings
from remoe.platform.plan import (
    functions_from_proto,
    functions_to_proto,
    load_plan_file,
    plan_with_functions,
    remote_ratio_functions,
)
from remoe.ports import side_port_file
from remoe.proto import backbone_pb2, backbone_pb2_grpc, common_pb2, expert_pb2
from remoe.server import startup
from remoe.server.common import Server, setup_logging
from remoe.server.tracing import tracer
from remoe.settings import BackboneSettings, load_settings
from remoe.transport.expert_stream import RemoteExpertError
from remoe.transport.request_context import FunctionBill, call_time_remaining, current_deadline, current_request_id

log = logging.getLogger(__name__)
_tracer = tracer(__name__)


class BackboneServicer(backbone_pb2_grpc.BackboneServiceServicer):
    def __init__(
        self,
        backbone: Backbone,
        executor: DispatchingExecutor,
        model_dir: str,
        max_new_tokens: int,
        batching: BatchSettings | None = None,
    ) -> None:
        """`batching`: serve through one continuous batch (None: each request alone on its thread)."""
        self.backbone = backbone
        self.executor = executor
        self.batching_off_reason = "" if batching is not None else "batching is off"
        if batching is not None and (reason := batching_unsupported(backbone.model.config)):
            self.batching_off_reason = f"{type(backbone.model).__name__} is served unbatched: {reason}"
            log.warning(self.batching_off_reason)
            batching = None
        self.engine = BatchEngine(backbone.model, backbone.device, batching) if batching is not None else None
        self.model_dir = model_dir
        self.max_new_tokens = max_new_tokens
        config = backbone.model.config.get_text_config()
        self.vocab_size = int(config.vocab_size)
        self.context_len = int(getattr(config, "max_position_embeddings", 0) or 0)
        self.eos_token_ids = eos_token_ids(Path(model_dir), backbone.model.config)
        self._lock = threading.Lock()
        self._active = 0
        self._served = 0
        self._ttft_ms: deque[float] = deque(maxlen=512)
        self._tpot_ms: deque[float] = deque(maxlen=512)

    def _validate(self, request, context) -> tuple[list[int], SamplingParams]:
        ids = list(request.token_ids)
        if not ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "token_ids is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token ids {bad[:5]} outside [0, {self.vocab_size})")
        try:
            params = sampling_from_proto(request.sampling)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"sampling: {e}")
        if params.max_new_tokens > self.max_new_tokens:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_new_tokens {params.max_new_tokens} is above this server's limit of {self.max_new_tokens}",
            )
        if self.context_len and len(ids) + params.max_new_tokens > self.context_len:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
                f"context of {self.context_len}",
            )
        return ids, params

    def _routing(self, request, context):
        """The request's plan compiled for dispatch, its functions deployed and starting; None: the default."""
        if not request.functions:
            return None
        try:
            specs = functions_from_proto(request.functions)
            routing = self.executor.routing_for(specs)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"plan: {e}")
        try:  # cold starts overlap the prefill's first layers
            self.executor.platform.warm(list(routing.memory_mb), bounded=True)
        except FunctionStartError as e:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return routing

    def Generate(self, request, context):
        ids, params = self._validate(request, context)
        routing = self._routing(request, context)
        arch = self.backbone.arch
        recorder = ActivationRecorder(arch.layer_indices, arch.num_experts, arch.top_k)
        remaining = call_time_remaining(context)
        deadline = time.time() + remaining if remaining is not None else None
        request_id = request.request_id or uuid.uuid4().hex
        billed = FunctionBill()
        with self._lock:
            self._active += 1
        platform = self.executor.platform
        try:
            with (
                platform.lease() if platform is not None else nullcontext(),
                _tracer.start_as_current_span("generate") as span,
            ):
                span.set_attribute("remoe.prompt_tokens", len(ids))
                if self.engine is not None:
                    job = BatchRequest(request_id, ids, params, self.eos_token_ids, recorder, deadline, routing, billed)
                    job.trace_context = otel_context.get_current()  # the engine's spans join this request's trace
                    context.add_callback(lambda: self.engine.cancel(job))  # the client left: free its place
                    steps, trace = self.engine.submit(job), job.trace
                else:
                    trace = GenerationTrace()
                    steps = self._unbatched(ids, params, trace, recorder, request_id, deadline, routing, billed)
                for n, token in enumerate(steps):
                    if not context.is_active():
                        return  # the client cancelled or its deadline passed: stop computing
                    chunk = token_chunk(token, n, trace, params)
                    if not trace.finish_reason:
                        yield chunk
                        continue
                    record = recorder.record
                    record.n_in, record.n_out = len(ids), len(trace.tokens)
                    usage = common_pb2.Usage(
                        prompt_tokens=len(ids),
                        completion_tokens=len(trace.tokens),
                        ttft_s=trace.ttft_s,
                        tpot_s=trace.tpot_s,
                        activations=activation_summary(recorder),
                        plan=(routing or self.executor.default).placement.summary(),
                        function_seconds=billed.seconds,
                        function_calls=billed.calls,
                        function_round_trip_seconds=billed.round_trip_s,
                        function_memory_mb=(routing or self.executor.default).memory_mb,
                        expert_format=self.backbone.expert_format,
                    )
                    if self.engine is not None:
                        add_batch_usage(usage, job)
                    with self._lock:
                        self._served += 1
                        self._ttft_ms.append(trace.ttft_s * 1e3)
                        self._tpot_ms.append(trace.tpot_s * 1e3)
                    chunk.finish_reason = trace.finish_reason
                    chunk.usage.CopyFrom(usage)
                    yield chunk
        except RemoteExpertError as e:
            context.abort(e.code, str(e))
        except DeadlinePassed as e:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except RequestCancelled:
            return
        finally:
            with self._lock:
                self._active -= 1

    def _unbatched(self, ids, params, trace, recorder, request_id, deadline, routing, billed):
        """One request alone on this thread: its own forward per token, its context in contextvars."""
        contextvars = (
            current_recorder,
            current_request_id,
            current_deadline,
            current_routing,
            current_function_bill,
        )
        values = (recorder, request_id, deadline, routing, billed)
        tokens = [var.set(value) for var, value in zip(contextvars, values, strict=True)]
        try:
            steps = generate_tokens(
                self.backbone.model,
                self.backbone.device,
                ids,
                params,
                self.eos_token_ids,
                trace,
                on_decode=recorder.start_decode,
            )
            while True:
                # One span per step: the first next() is the prefill, each later one a decode step.
                with _tracer.start_as_current_span("decode_step" if trace.tokens else "prefill"):
                    token = next(steps, None)
                if token is None:
                    return
                yield token
        finally:
            for var, token in zip(contextvars, tokens, strict=True):
                var.reset(token)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def batch_status(self) -> backbone_pb2.BatchStatus:
        engine = self.engine
        if engine is None:
            return backbone_pb2.BatchStatus(enabled=False, disabled_reason=self.batching_off_reason)
        decoding, prefilling, waiting = engine.snapshot()
        sizes, waits = list(engine.step_requests)[-256:], list(engine.queue_wait_s)[-256:]
        return backbone_pb2.BatchStatus(
            enabled=True,
            max_requests=engine.settings.max_requests,
            decoding=decoding,
            prefilling=prefilling,
            waiting=waiting,
            steps=engine.steps,
            busy_s=engine.busy_s,
            recent_step_requests_mean=float(np.mean(sizes)) if sizes else 0.0,
            recent_queue_wait_ms_p50=float(np.median(waits)) * 1e3 if waits else 0.0,
        )

    def Warm(self, request, context):
        platform = self.executor.platform
        if platform is None:
            return backbone_pb2.WarmReply(started=0)
        names = list(request.functions) or [spec.name for spec in platform.specs()]
        try:
            platform.warm(names)
        except FunctionStartError as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        return backbone_pb2.WarmReply(started=len(names))

    def Running(self, request, context):
        platform = self.executor.platform
        if platform is None:
            return backbone_pb2.RunningReply()
        return backbone_pb2.RunningReply(
            functions=functions_to_proto(platform.running()),
            keep_alive_s=platform.keep_alive_s,
            memory_budget_mb=getattr(platform, "memory_budget_mb", 0),  # the local platform's; Knative has none
        )

    def request_counts(self) -> tuple[int, int]:
        """(requests generating now, requests generated to the end), for the metrics."""
        with self._lock:
            return self._active, self._served

    def Status(self, request, context):
        destinations = []
        for address, stream in self.executor.streams.items():
            try:
                destinations.append(
                    backbone_pb2.DestinationStatus(address=address, healthy=True, stats=stream.stats(2))
                )
            except grpc.RpcError as e:
                destinations.append(backbone_pb2.DestinationStatus(address=address, healthy=False, error=e.details()))
        local = self.executor.local
        if local is not None:
            stats = local.stats
            destinations.append(
                backbone_pb2.DestinationStatus(
                    address=LOCAL,
                    healthy=True,
                    stats=expert_pb2.StatsReply(
                        name="backbone-local",
                        resident_bytes=local.cache.resident_bytes,
                        hits=stats.hits,
                        loads=stats.loads,
                        bytes_loaded=stats.bytes_loaded,
                        evictions=stats.evictions,
                        load_s=stats.load_seconds,
                    ),
                )
            )
        with self._lock:
            ttft = float(np.median(self._ttft_ms)) if self._ttft_ms else 0.0
            tpot = float(np.median(self._tpot_ms)) if self._tpot_ms else 0.0
            active, served = self._active, self._served
        fanout = list(self.executor.fanout_s)
        platform = self.executor.platform
        functions = [
            backbone_pb2.FunctionInstance(
                function=i.function,
                replica=i.replica,
                state=i.state,
                address=i.address,
                memory_mb=i.memory_mb,
                cold_starts=i.cold_starts,
                calls=i.calls,
                last_error=i.last_error,
                crashes=i.crashes,
            )
            for i in (platform.status() if platform is not None else [])
        ]
        return backbone_pb2.BackboneStatusReply(
            functions=functions,
            function_retries=self.executor.retries,
            function_fallbacks=self.executor.fallbacks,
            function_cold_fallbacks=self.executor.cold_fallbacks,
            function_reused_experts=self.executor.reused_experts,
            service_failovers=self.executor.failovers,
            batch=self.batch_status(),
            model=self.model_dir,
            architecture=type(self.backbone.model).__name__,
            device=str(self.backbone.device),
            active_requests=active,
            served_requests=served,
            destinations=destinations,
            recent_ttft_ms_p50=ttft,
            recent_tpot_ms_p50=tpot,
            recent_fanout_ms_p50=float(np.median(fanout)) * 1e3 if fanout else 0.0,
        )


def main(argv: list[str] | None = None) -> None:
    startup.begin()  # the module's imports are done: what follows is this service's own start
    s = load_settings(BackboneSettings, argv, "python -m remoe.services.backbone", __doc__.split("\n")[0])
    setup_logging("backbone", s.verbose)
    server = Server("backbone", s.host, s.port, s.workers)
    model = str(s.model)
    with startup.step("open weights"):
        weights = open_weights(model)
    dtype = resolve_dtype(weights.config, s.dtype)
    arch = weights.arch
    services = s.experts
    if s.plan:
        functions = load_plan_file(s.plan)
    else:
        functions = remote_ratio_functions(arch.layer_indices, arch.num_experts, s.remote_ratio, s.function_memory_mb)
    placement = plan_with_functions(arch.layer_indices, arch.num_experts, services, functions)
    # Always a platform: the scheduler's plans bring their own functions with each request.
    try:
        with startup.step("experts record"):
            platform = platform_from_settings(s, weights)
    except RemoeError as e:
        raise SystemExit(f"backbone: {e}") from None
    platform.deploy(functions)
    # Held until the backbone serves: functions started with it do not idle out meanwhile (their TTL counts from then).
    with platform.lease():
        if s.function_warm_at_start and functions:
            with startup.step("start functions"):
                platform.warm()  # their cold starts overlap the model's load below
        # Without expert services the backbone computes locally, and takes over failed functions' batches too.
        local = LocalExpertExecutor(weights, dtype=dtype) if not services else None
        executor = DispatchingExecutor(
            placement,
            arch.layer_indices,
            arch.num_experts,
            local=local,
            platform=platform,
            cold_start=s.function_cold_start,
            local_plane=s.expert_transport == "auto",
        )
        with startup.step("load model"):
            backbone = Backbone(weights, executor, device=s.device, dtype=dtype)
        batching = BatchSettings(s.max_batch_requests, s.prefill_chunk) if s.batching == "on" else None
        servicer = BackboneServicer(backbone, executor, model, s.max_new_tokens, batching)
        backbone_pb2_grpc.add_BackboneServiceServicer_to_server(servicer, server.server)
        server.add(backbone_pb2.DESCRIPTOR.services_by_name["BackboneService"].full_name)
        if s.metrics_port is not None:
            serve_metrics(
                backbone_registry(servicer), s.host, s.metrics_port, "backbone", side_port_file(s.ready_file, "metrics")
            )
        server.start(s.ready_file)
    server.wait_for_signal()
    servicer.close()
    executor.close()
    platform.close()


if __name__ == "__main__":
    main()
