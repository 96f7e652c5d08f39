"""Gateway: the client-facing service. Validates, tokenizes, streams tokens and text, reports usage.

python -m remoe.services.gateway --model DIR --backbone 127.0.0.1:50052 [--port 50051]
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from remoe.checkpoint.files import load_config
from remoe.checkpoint.weights import open_weights
from remoe.constants import MAX_PROMPT_CHARS, RETRY_PUSHBACK_KEY
from remoe.metrics.exposition import serve_metrics
from remoe.metrics.gateway import GatewayMetrics
from remoe.model.text_stream import TextStream
from remoe.model.tokenizer import load_tokenizer
from remoe.platform.plan import functions_to_proto
from remoe.ports import side_port_file, write_port
from remoe.predictor.divergence import mean_js
from remoe.predictor.prior import GlobalPrior, model_id
from remoe.proto import (
    backbone_pb2,
    backbone_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    predictor_pb2,
    predictor_pb2_grpc,
)
from remoe.scheduler.client import PlanClient
from remoe.scheduler.estimate import main_memory_gb
from remoe.scheduler.ledger import Ledger, meter
from remoe.scheduler.plan_output import functions_of_reply
from remoe.scheduler.problem import Limits, Prices
from remoe.scheduler.shape import shape_of_model
from remoe.server.common import Server, setup_logging
from remoe.server.tracing import outgoing_metadata
from remoe.services.auth import BearerTokenInterceptor, TLSConfigError, server_credentials
from remoe.settings import GatewaySettings, load_settings
from remoe.transport import tensor_codec
from remoe.transport.channel import insecure_channel
from remoe.transport.request_context import call_time_remaining

log = logging.getLogger(__name__)
PREDICT_TIMEOUT_S = 1.0  # a forecast that takes longer is skipped, not waited for
DEFAULT_MAX_REQUESTS = 64
PRIOR_SOURCE = "gateway-prior"  # Usage.forecast_source of a request planned from the prior (predictor down)


@dataclass
class PlanningConfig:
    """Where plans come from and where metering goes (all optional: without them, the default placement)."""

    scheduler_address: str | None = None
    ledger_redis_url: str | None = None
    slo_ttft_s: float = 0.0  # default SLOs for requests that bring none (0 = none)
    slo_tpot_s: float = 0.0
    prices: Prices = field(default_factory=Prices)
    prior_redis_url: str | None = None  # the predictor's global prior: plans use it while the predictor is down


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        model_dir: Path,
        backbone_address: str,
        prewarm: bool = True,
        predictor_address: str | None = None,
        planning: PlanningConfig | None = None,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        self.model_dir = model_dir
        self.max_requests = max_requests
        self.prewarm = prewarm
        self.predictor = (
            predictor_pb2_grpc.PredictorServiceStub(insecure_channel(predictor_address)) if predictor_address else None
        )
        self.tokenizer = load_tokenizer(model_dir)
        config = load_config(model_dir).get_text_config()
        self.vocab_size = int(config.vocab_size)
        self.backbone_channel = insecure_channel(backbone_address)
        self.backbone = backbone_pb2_grpc.BackboneServiceStub(self.backbone_channel)
        self.planning = planning or PlanningConfig()
        self.shape = shape_of_model(model_dir)
        self.planner = (
            PlanClient(self.planning.scheduler_address, self.shape.layers, self.shape.experts)
            if self.planning.scheduler_address
            else None
        )
        self.ledger = Ledger(self.planning.ledger_redis_url) if self.planning.ledger_redis_url else None
        self.prior = self._open_prior(model_dir) if self.planning.prior_redis_url and self.planner else None
        # The main model's memory when no plan says otherwise: backbone on the GPU, every expert on the CPU.
        self.default_memory = main_memory_gb(self.shape.request(None, 1, 0), [()] * self.shape.layers, Limits())
        self._lock = threading.Lock()
        self._active = 0  # admitted requests, from arrival to their last chunk
        self._served = 0
        self._refused = 0
        self._durations_s: deque[float] = deque(maxlen=256)  # of recent requests, for the retry hint
        self._background: set = set()
        self.metrics = GatewayMetrics(lambda: self._active, max_requests)

    def _open_prior(self, model_dir: Path) -> GlobalPrior:
        weights = open_weights(model_dir)
        arch = weights.arch
        key = model_id(arch.model_type, weights.path)
        return GlobalPrior.from_url(self.planning.prior_redis_url, key, len(arch.layer_indices), arch.num_experts)

    def _prompt_ids(self, request, context) -> list[int]:
        kind = request.WhichOneof("input")
        if kind is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give a prompt or token_ids")
        if kind == "token_ids":
            ids = list(request.token_ids.ids)
        else:
            if not request.prompt:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty")
            if len(request.prompt) > MAX_PROMPT_CHARS:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the prompt is over {MAX_PROMPT_CHARS} characters")
            if self.tokenizer is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this model has no tokenizer; send token_ids")
            ids = self.tokenizer.encode(request.prompt)
        if not ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt has no tokens")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token ids {bad[:5]} outside [0, {self.vocab_size})")
        return ids

    def Generate(self, request, context):
        """Admission control first: beyond `max_requests` at once a request is refused at once
        (RESOURCE_EXHAUSTED, with a retry hint) rather than queued without bound."""
        with self._lock:
            admitted = self._active < self.max_requests
            if admitted:
                self._active += 1
            else:
                self._refused += 1
                retry_ms = self._retry_after_ms()
        if not admitted:
            self.metrics.requests.labels(grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(retry_ms)),))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the gateway is serving its limit of {self.max_requests} requests at once "
                f"(REMOE_GATEWAY_MAX_REQUESTS); retry in {retry_ms} ms",
            )
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED  # the client left (the stream was closed before its end)
        try:
            served = yield from self._generate(request, context, started)
            code = grpc.StatusCode.OK if served else grpc.StatusCode.CANCELLED
        except GeneratorExit:
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN  # what context.abort set
            raise
        finally:
            with self._lock:
                self._active -= 1
                self._durations_s.append(time.perf_counter() - started)
            self.metrics.requests.labels(code.name).inc()

    def _retry_after_ms(self) -> int:
        """When to come back: a recent request's median duration, the time in which the requests in flight turn
        over (lock held). Shorter hints were measured to make 32 clients on 16 slots retry ~20 times each."""
        if not self._durations_s:
            return 1000
        return int(min(60_000, max(100, 1e3 * float(np.median(self._durations_s)))))

    def _generate(self, request, context, arrived: float):
        """The request's chunks; returns True when it was served to its end, False when the client left."""
        if self.prewarm and self.planner is None:
            # First thing: start the static plan's functions so their cold starts overlap tokenizing and prefill.
            # (With a scheduler, the backbone starts each request's own functions as the request arrives.)
            self._warm()
        ids = self._prompt_ids(request, context)
        if request.sampling.max_new_tokens == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens must be >= 1")
        for name in ("slo_ttft_s", "slo_tpot_s"):
            value = getattr(request, name)
            if not value >= 0 or value == float("inf"):  # NaN fails the first test
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be a finite number >= 0, got {value}")
        stops = [s for s in request.stop if s]
        if stops and self.tokenizer is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "stop strings need a tokenizer")
        request_id = request.request_id or uuid.uuid4().hex
        prompt_text = self._prompt_text(request, ids)
        forecast = self._predict(prompt_text, ids)
        plan, from_prior = self._plan(request, forecast, len(ids))
        functions = functions_to_proto(functions_of_reply(plan)) if plan is not None else []
        started = time.perf_counter()
        call = self.backbone.Generate(
            backbone_pb2.BackboneGenerateRequest(
                request_id=request_id, token_ids=ids, sampling=request.sampling, functions=functions
            ),
            timeout=call_time_remaining(context),
            metadata=outgoing_metadata(),
        )
        context.add_callback(call.cancel)  # the client going away stops the backbone too
        text = TextStream(self.tokenizer, stops)
        first_token_s = None
        ttft_s = 0.0
        n_out = 0
        try:
            for chunk in call:
                delta = text.push(chunk.token_id)
                n_out += 1
                if first_token_s is None:
                    first_token_s = time.perf_counter() - started
                    ttft_s = time.perf_counter() - arrived
                if text.stopped:
                    call.cancel()
                    usage = common_pb2.Usage(prompt_tokens=len(ids), completion_tokens=len(text.tokens))
                    # The backbone's usage never comes: time it here (function seconds unknown, metered as 0).
                    usage.ttft_s = first_token_s
                    usage.tpot_s = (time.perf_counter() - started - first_token_s) / max(1, len(text.tokens) - 1)
                    self._meter(request_id, usage, plan)
                    yield gateway_pb2.GenerateChunk(
                        token_ids=[chunk.token_id],
                        text_delta=delta,
                        finish_reason="stop",
                        usage=usage,
                        request_id=request_id,
                    )
                    break
                if chunk.finish_reason:
                    delta += text.finish()
                    self._learn(prompt_text, ids, chunk.usage, forecast)
                    if from_prior:
                        chunk.usage.forecast_source = PRIOR_SOURCE
                    scored = forecast is not None and chunk.usage.forecast_source
                    self.metrics.forecast(chunk.usage.forecast_source, chunk.usage.forecast_js if scored else None)
                    self._meter(request_id, chunk.usage, plan)
                yield gateway_pb2.GenerateChunk(
                    token_ids=[chunk.token_id],
                    text_delta=delta,
                    finish_reason=chunk.finish_reason,
                    usage=chunk.usage if chunk.finish_reason else None,
                    request_id=request_id,
                )
            with self._lock:
                self._served += 1
        except grpc.RpcError as e:
            if not context.is_active():
                return False  # the client left; the backbone call was cancelled with it
            context.abort(e.code(), f"backbone: {e.details()}")
        last_s = time.perf_counter() - arrived
        self.metrics.served(len(ids), n_out, ttft_s, (last_s - ttft_s) / (n_out - 1) if n_out > 1 else None)
        return True

    def _prompt_text(self, request, ids: list[int]) -> str:
        if request.WhichOneof("input") == "prompt":
            return request.prompt
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))

    def _predict(self, prompt: str, ids: list[int]):
        """The predictor's forecast, or None: a forecast must never fail or stall a request."""
        if self.predictor is None:
            return None
        try:
            return self.predictor.Predict(
                predictor_pb2.PredictRequest(prompt=prompt, token_ids=ids), timeout=PREDICT_TIMEOUT_S
            )
        except grpc.RpcError as e:
            log.warning("predictor unavailable, planning without a forecast (%s)", e.code().name)
            return None

    def _plan(self, request, forecast, n_in: int):
        """(the scheduler's plan for this request or None, whether it was planned from the global prior). None: no
        scheduler, or it failed: the default placement."""
        if self.planner is None:
            return None, False
        frequency = None
        if forecast is not None:
            decoded = tensor_codec.decode(forecast.frequency, "frequency", dtype="float32", rank=2).numpy()
            if decoded.shape == (self.shape.layers, self.shape.experts):
                frequency = decoded.astype(np.float64)
        elif self.prior is not None:  # the predictor is down: every past request's activation, straight from Redis
            frequency = self.prior.frequency()
        plan = self.planner.plan(
            frequency,
            n_in,
            int(request.sampling.max_new_tokens),
            request.slo_ttft_s or self.planning.slo_ttft_s,
            request.slo_tpot_s or self.planning.slo_tpot_s,
        )
        return plan, plan is not None and forecast is None and frequency is not None

    def _meter(self, request_id: str, usage, plan) -> None:
        """Each request's cost into the metrics, and one metering record to the ledger (exactly once by request
        id; buffered if Redis is down)."""
        prices = self.planning.prices
        if plan is not None:
            memory, prices = (plan.main_gpu_gb, plan.main_cpu_gb), Prices(plan.cpu_gb_s, plan.gpu_gb_s)
        else:
            memory = self.default_memory
        record = meter(request_id, self.shape.name, usage, *memory, prices.cpu_gb_s, prices.gpu_gb_s, plan)
        self.metrics.cost.observe(record.cost)
        if self.ledger is not None:
            self.ledger.write(record)

    def _learn(self, prompt: str, ids: list[int], usage, forecast) -> None:
        """Score the forecast against what happened (into usage) and send the activation to the predictor."""
        act = usage.activations
        if forecast is not None and act.prefill:
            shape = (len(act.moe_layers), act.num_experts)
            predicted = tensor_codec.decode(forecast.frequency, "frequency", dtype="float32", rank=2).numpy()
            if predicted.shape == shape:
                actual = np.asarray(act.prefill, dtype=np.float64).reshape(shape)
                usage.forecast_source = forecast.source
                usage.forecast_js = mean_js(predicted.astype(np.float64), actual)
        if self.predictor is None or not act.prefill:
            return
        future = self.predictor.Record.future(
            predictor_pb2.RecordRequest(prompt=prompt, token_ids=ids, activations=act, n_out=usage.completion_tokens),
            timeout=10,
        )
        with self._lock:
            self._background.add(future)  # held until done, like the warm calls
        future.add_done_callback(self._call_done)

    def _warm(self) -> None:
        future = self.backbone.Warm.future(backbone_pb2.WarmRequest(), timeout=10, metadata=outgoing_metadata())
        with self._lock:
            self._background.add(future)  # a dropped future may be cancelled: hold it until it is done
        future.add_done_callback(self._call_done)

    def _call_done(self, future) -> None:
        with self._lock:
            self._background.discard(future)
        if future.exception() is not None:
            log.warning("background call failed: %s", future.exception())

    def Status(self, request, context):
        with self._lock:
            reply = gateway_pb2.StatusReply(
                model=str(self.model_dir),
                active_requests=self._active,
                served_requests=self._served,
                refused_requests=self._refused,
                max_requests=self.max_requests,
            )
        try:
            reply.backbone.CopyFrom(self.backbone.Status(backbone_pb2.BackboneStatusRequest(), timeout=5))
        except grpc.RpcError as e:
            reply.backbone_error = f"{e.code().name}: {e.details()}"
        return reply


def main(argv: list[str] | None = None) -> None:
    s = load_settings(GatewaySettings, argv, "python -m remoe.services.gateway", __doc__.split("\n")[0])
    setup_logging("gateway", s.verbose)
    # A thread for every admitted request plus a few for Status and health; beyond that gRPC itself refuses
    # (a backstop: the executor's queue stays bounded whatever arrives).
    workers = max(s.workers, s.max_requests + 4)
    try:
        credentials = server_credentials(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
    except TLSConfigError as e:
        raise SystemExit(f"gateway: {e}") from None
    interceptors = [BearerTokenInterceptor(s.auth_token)] if s.auth_token else []
    server = Server("gateway", s.host, s.port, workers, workers, interceptors, credentials)
    planning = PlanningConfig(
        s.scheduler, s.ledger_redis_url, s.slo_ttft_ms / 1e3, s.slo_tpot_ms / 1e3, prior_redis_url=s.prior_redis_url
    )
    servicer = GatewayServicer(
        s.model,
        s.backbone,
        prewarm=s.prewarm,
        predictor_address=s.predictor,
        planning=planning,
        max_requests=s.max_requests,
    )
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server.server)
    server.add(gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name)
    http = None
    if s.http:  # before the gRPC server writes its ready file: ready means both serve
        from remoe.openai_api import HttpServer, create_app

        app = create_app(servicer, s.served_model_name or Path(s.model).resolve().name, s.auth_token)
        http = HttpServer(app, s.host, s.http_port, s.tls_cert, s.tls_key)
        port = http.start()
        if s.ready_file is not None:
            write_port(side_port_file(s.ready_file, "http"), port)
    if s.metrics_port is not None:
        serve_metrics(
            servicer.metrics.registry, s.host, s.metrics_port, "gateway", side_port_file(s.ready_file, "metrics")
        )
    server.start(s.ready_file)
    server.wait_for_signal()
    if http is not None:
        http.stop()


if __name__ == "__main__":
    main()
