"""GatewayCore: one request from arrival to its last chunk, as a library call. `generate(request, caller)` yields
GenerateChunks and raises Refused (a status code and a message) when the request cannot be served; `caller` is a
grpc.ServicerContext or a LocalCaller, the part of the caller the gateway needs (deadline, leaving)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from remoe.checkpoint.files import load_config
from remoe.checkpoint.manifest import Manifest
from remoe.checkpoint.weights import open_weights
from remoe.gateway.admission import Admission
from remoe.gateway.background import BackgroundCalls
from remoe.gateway.caller import Caller
from remoe.gateway.learning import Learning
from remoe.gateway.metering import Metering
from remoe.gateway.planning import PlanningConfig, RequestPlanner
from remoe.gateway.refused import Refused
from remoe.gateway.validation import check_limits, prompt_ids, prompt_text
from remoe.metrics.gateway import GatewayMetrics
from remoe.model.generation import time_per_output_token
from remoe.model.text_stream import TextStream
from remoe.model.tokenizer import load_tokenizer
from remoe.platform.plan import functions_to_proto
from remoe.predictor.prior import GlobalPrior, model_id
from remoe.proto import backbone_pb2, backbone_pb2_grpc, common_pb2, gateway_pb2, predictor_pb2_grpc
from remoe.scheduler.client import PlanClient
from remoe.scheduler.ledger import Ledger
from remoe.scheduler.plan_output import functions_of_reply
from remoe.scheduler.shape import shape_of_model
from remoe.server.tracing import outgoing_metadata
from remoe.settings import GatewaySettings, default_of
from remoe.transport.channel import insecure_channel
from remoe.transport.request_context import call_time_remaining

PRIOR_SOURCE = "gateway-prior"  # Usage.forecast_source of a request planned from the prior (predictor down)
WARM_TIMEOUT_S = 10.0
RUNNING_TIMEOUT_S = 0.5  # which functions run, asked per planned request: a slow answer plans without it
log = logging.getLogger(__name__)


class GatewayCore:
    def __init__(
        self,
        model_dir: Path,
        backbone_address: str,
        prewarm: bool = True,
        predictor_address: str | None = None,
        planning: PlanningConfig | None = None,
        max_requests: int = default_of(GatewaySettings, "max_requests"),
        backbone=None,  # a BackboneService stub (default: one to backbone_address)
    ) -> None:
        self.model_dir = Path(model_dir)
        self.prewarm = prewarm
        self.tokenizer = load_tokenizer(self.model_dir)
        self.expert_format = Manifest.expert_format_label(self.model_dir)  # said in every usage
        self.vocab_size = int(load_config(self.model_dir).get_text_config().vocab_size)
        self.backbone_channel = insecure_channel(backbone_address)
        self.backbone = backbone or backbone_pb2_grpc.BackboneServiceStub(self.backbone_channel)
        self.admission = Admission(max_requests)
        self.metrics = GatewayMetrics(lambda: self.admission.active, max_requests)
        self.background = BackgroundCalls()
        planning = planning or PlanningConfig()
        shape = shape_of_model(self.model_dir)
        predictor = (
            predictor_pb2_grpc.PredictorServiceStub(insecure_channel(predictor_address)) if predictor_address else None
        )
        scheduler = (
            PlanClient(planning.scheduler_address, shape.layers, shape.experts) if planning.scheduler_address else None
        )
        prior = self._open_prior(planning.prior_redis_url) if planning.prior_redis_url and scheduler else None
        self.planner = RequestPlanner(shape, planning, predictor, scheduler, prior, self.running_functions)
        ledger = Ledger(planning.ledger_redis_url) if planning.ledger_redis_url else None
        self.metering = Metering(shape, planning.prices, ledger, self.metrics)
        self.learning = Learning(predictor, self.background)

    def _open_prior(self, redis_url: str) -> GlobalPrior:
        weights = open_weights(self.model_dir)
        arch = weights.arch
        key = model_id(arch.model_type, weights.path)
        return GlobalPrior.from_url(redis_url, key, len(arch.layer_indices), arch.num_experts)

    # -- one request
    def generate(self, request: gateway_pb2.GenerateRequest, caller: Caller) -> Iterator[gateway_pb2.GenerateChunk]:
        """The request's chunks, the last with its usage. Raises Refused; a caller that leaves ends it quietly."""
        code = grpc.StatusCode.CANCELLED  # the caller left (the stream was closed before its end)
        try:
            with self.admission.slot():
                served = yield from self._serve(request, caller, time.perf_counter())
                code = grpc.StatusCode.OK if served else grpc.StatusCode.CANCELLED
        except Refused as e:
            code = e.code
            raise
        except GeneratorExit:
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            self.metrics.requests.labels(code.name).inc()

    def _serve(self, request, caller: Caller, arrived: float):
        """Returns True when the request was served to its end, False when the caller left."""
        if self.prewarm and self.planner.scheduler is None:
            # First thing: start the static plan's functions so their cold starts overlap tokenizing and prefill.
            # (With a scheduler, the backbone starts each request's own functions as the request arrives.)
            self.warm()
        ids = prompt_ids(request, self.tokenizer, self.vocab_size)
        stops = check_limits(request, self.tokenizer)
        request_id = request.request_id or uuid.uuid4().hex
        text_prompt = prompt_text(request, ids, self.tokenizer)
        t0 = time.perf_counter()
        forecast = self.planner.forecast(text_prompt, ids)
        t1 = time.perf_counter()
        plan, from_prior = self.planner.plan(request, forecast, len(ids))
        functions = functions_to_proto(functions_of_reply(plan)) if plan is not None else []
        started = time.perf_counter()
        gateway_times = {"predict_s": t1 - t0, "plan_s": started - t1}  # before the backbone's clock starts
        call = self.backbone.Generate(
            backbone_pb2.BackboneGenerateRequest(
                request_id=request_id, token_ids=ids, sampling=request.sampling, functions=functions
            ),
            timeout=call_time_remaining(caller),
            metadata=outgoing_metadata(),
        )
        caller.add_callback(call.cancel)  # the caller going away stops the backbone too
        text = TextStream(self.tokenizer, stops)
        first_token_s = None
        ttft_s = 0.0
        n_out = 0
        echo = request.sampling.echo
        try:
            for chunk in call:
                delta = text.push(chunk.token_id)
                n_out += 1
                scores = _scores(chunk, ids if echo and n_out == 1 else None)
                if first_token_s is None:
                    first_token_s = time.perf_counter() - started
                    ttft_s = time.perf_counter() - arrived
                if text.stopped:
                    call.cancel()
                    usage = common_pb2.Usage(
                        prompt_tokens=len(ids),
                        completion_tokens=len(text.tokens),
                        expert_format=self.expert_format,
                        **gateway_times,
                    )
                    # The backbone's usage never comes: time it here (function seconds unknown, metered as 0).
                    usage.ttft_s = first_token_s
                    usage.tpot_s = time_per_output_token(first_token_s, time.perf_counter() - started, len(text.tokens))
                    self.metering.meter(request_id, usage, plan)
                    yield gateway_pb2.GenerateChunk(
                        token_ids=[chunk.token_id],
                        text_delta=delta,
                        finish_reason="stop",
                        usage=usage,
                        request_id=request_id,
                        **scores,
                    )
                    break
                if chunk.finish_reason:
                    delta += text.finish()
                    chunk.usage.predict_s, chunk.usage.plan_s = gateway_times["predict_s"], gateway_times["plan_s"]
                    self.learning.learn(text_prompt, ids, chunk.usage, forecast)
                    if from_prior:
                        chunk.usage.forecast_source = PRIOR_SOURCE
                    scored = forecast is not None and chunk.usage.forecast_source
                    self.metrics.forecast(chunk.usage.forecast_source, chunk.usage.forecast_js if scored else None)
                    self.metering.meter(request_id, chunk.usage, plan)
                yield gateway_pb2.GenerateChunk(
                    token_ids=[chunk.token_id],
                    text_delta=delta,
                    finish_reason=chunk.finish_reason,
                    usage=chunk.usage if chunk.finish_reason else None,
                    request_id=request_id,
                    **scores,
                )
            self.admission.count_served()
        except grpc.RpcError as e:
            if not caller.is_active():
                return False  # the caller left; the backbone call was cancelled with it
            raise Refused(e.code(), f"backbone: {e.details()}") from None
        last_s = time.perf_counter() - arrived
        tpot_s = time_per_output_token(ttft_s, last_s, n_out) if n_out > 1 else None
        self.metrics.served(len(ids), n_out, ttft_s, tpot_s)
        return True

    # -- the rest of the gateway's API
    def warm(self) -> None:
        """Start the backbone's functions (in the background)."""
        self.background.hold(
            self.backbone.Warm.future(backbone_pb2.WarmRequest(), timeout=WARM_TIMEOUT_S, metadata=outgoing_metadata())
        )

    def running_functions(self) -> backbone_pb2.RunningReply | None:
        """The functions serving or starting now, for warm-aware plans; None (plan as before) when the backbone
        cannot say in time."""
        try:
            return self.backbone.Running(backbone_pb2.RunningRequest(), timeout=RUNNING_TIMEOUT_S)
        except grpc.RpcError as e:
            log.warning("backbone Running: %s; planning without knowing which functions run", e.code().name)
            return None

    def status(self) -> gateway_pb2.StatusReply:
        reply = gateway_pb2.StatusReply(
            model=str(self.model_dir),
            active_requests=self.admission.active,
            served_requests=self.admission.served,
            refused_requests=self.admission.refused,
            max_requests=self.admission.limit,
        )
        try:
            reply.backbone.CopyFrom(self.backbone.Status(backbone_pb2.BackboneStatusRequest(), timeout=5))
        except grpc.RpcError as e:
            reply.backbone_error = f"{e.code().name}: {e.details()}"
        return reply

    def backbone_problem(self, timeout_s: float) -> str | None:
        """Why the backbone cannot serve now (unreachable, not serving), or None: what /health reports."""
        try:
            reply = health_pb2_grpc.HealthStub(self.backbone_channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError as e:
            return f"backbone unreachable: {e.code().name}"
        return None if reply.status == health_pb2.HealthCheckResponse.SERVING else "backbone is not serving"


def _scores(chunk: backbone_pb2.BackboneChunk, prompt: list[int] | None) -> dict:
    """A backbone chunk's log-probabilities as GenerateChunk fields; `prompt`: its ids, on an echo's first chunk."""
    fields: dict = {"logprobs": [chunk.logprob]} if chunk.HasField("logprob") else {}
    if prompt is not None:
        fields.update(prompt_token_ids=prompt, prompt_logprobs=chunk.prompt_logprobs)
    return fields
