"""What the scheduler service does, without the network: validate a plan request, look its signature up in the
plan cache (this process, then Redis), plan on a miss, and answer a `PlanReply`.

Redis is optional and never fails a plan: when it is unreachable the plan is computed and returned uncached.
L = MoE layers, E = experts.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict

import numpy as np
from google.protobuf import json_format

from remoe.proto import scheduler_pb2
from remoe.scheduler.estimate import LayerPlan, estimate
from remoe.scheduler.planner import Plan, plan
from remoe.scheduler.problem import Limits, Prices, Profile
from remoe.scheduler.shape import ModelShape
from remoe.scheduler.signature import PlanKey, plan_key
from remoe.scheduler.warm_reuse import RunningFunction, prefer_running
from remoe.transport.tensor_wire import decode_numpy

log = logging.getLogger(__name__)
CACHE_PREFIX = "remoe:plan:"
CACHE_TTL_S = 24 * 3600
LOCAL_CACHE = 4096  # plans kept in this process


def reply_of(result: Plan, key: PlanKey, moe_layers: list[int], prices: Prices) -> scheduler_pb2.PlanReply:
    est = result.estimate
    return scheduler_pb2.PlanReply(
        layers=[
            scheduler_pb2.PlannedLayer(
                layer=layer,
                remote=list(p.remote),
                memory_gb=p.memory_gb,
                replicas=[scheduler_pb2.PlannedReplica(experts=list(r)) for r in p.replicas],
            )
            for layer, p in zip(moe_layers, result.layers, strict=True)
        ],
        main_gpu_gb=result.main_gpu_gb,
        main_cpu_gb=result.main_cpu_gb,
        ttft_s=est.ttft_s,
        tpot_s=est.tpot_s,
        cost_main=est.cost_main,
        cost_remote=est.cost_remote,
        feasible=result.feasible,
        binding=result.binding,
        signature=key.signature,
        cpu_gb_s=prices.cpu_gb_s,
        gpu_gb_s=prices.gpu_gb_s,
    )


class PlanService:
    def __init__(
        self,
        shape: ModelShape,
        moe_layers: list[int],
        profile: Profile | None = None,
        prices: Prices | None = None,
        limits: Limits | None = None,
        redis_url: str | None = None,
        model_id: str = "",
        price_evictions: bool = True,  # warm-aware plans price the restarts of the functions they evict
    ) -> None:
        if len(moe_layers) != shape.layers:
            raise ValueError(f"{len(moe_layers)} MoE layer indices for a model with {shape.layers}")
        self.shape, self.moe_layers = shape, moe_layers
        self.profile, self.prices, self.limits = profile or Profile(), prices or Prices(), limits or Limits()
        self.model_id = model_id or shape.name
        self.price_evictions = price_evictions
        self._local: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.redis = None
        if redis_url:
            import redis

            self.redis = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        self.hits = self.misses = self.redis_errors = 0

    def _validate(self, request: scheduler_pb2.PlanRequest) -> np.ndarray:
        frequency = decode_numpy(request.frequency, "frequency", dtype="float32", rank=2)
        expected = (self.shape.layers, self.shape.experts)
        if frequency.shape != expected:
            raise ValueError(f"frequency is {list(frequency.shape)}; this model needs {list(expected)}")
        f = frequency.astype(np.float64)
        if not np.isfinite(f).all() or (f < 0).any() or not np.allclose(f.sum(1), 1.0, atol=1e-3):
            raise ValueError("frequency rows must be finite, non-negative and sum to 1")
        if request.n_in < 1:
            raise ValueError("n_in must be >= 1")
        for name in ("slo_ttft_s", "slo_tpot_s", "cpu_gb_s", "gpu_gb_s"):
            value = getattr(request, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0 (0 = default), got {value}")
        if not 0 <= request.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1) (0 = 0.95), got {request.confidence}")
        return f

    def plan(self, request: scheduler_pb2.PlanRequest) -> scheduler_pb2.PlanReply:
        """Raises ValueError naming what is wrong with the request."""
        start = time.perf_counter()
        frequency = self._validate(request)
        prices = Prices(request.cpu_gb_s or self.prices.cpu_gb_s, request.gpu_gb_s or self.prices.gpu_gb_s)
        key = plan_key(
            frequency,
            int(request.n_in),
            int(request.n_out_max),
            request.slo_ttft_s or math.inf,
            request.slo_tpot_s or math.inf,
            prices.cpu_gb_s,
            prices.gpu_gb_s,
            request.confidence or 0.95,
        )
        running = self._running(request) if request.price_starts else []
        reply = self._get(key.signature)
        planning = None
        if reply is not None:
            reply.cached = True
        else:
            planning = self._request(key)
            reply = reply_of(plan(planning, self.profile, prices, self.limits), key, self.moe_layers, prices)
            self._put(key.signature, reply)
        if (
            request.price_starts
        ):  # after the cache: what runs changes from one request to the next, the plan it starts from not
            self._prefer_running(reply, planning or self._request(key), running, prices, request)
        self._predict_own_lengths(reply, frequency, request, key, prices)
        reply.planning_ms = (time.perf_counter() - start) * 1e3
        return reply

    def _predict_own_lengths(self, reply, frequency: np.ndarray, request, key: PlanKey, prices: Prices) -> None:
        """Rewrite `reply`'s TTFT, TPOT and costs (in place) as the plan's prediction for this request's own
        forecast and lengths. The plan was made, and is cached, for its signature's rounded request, whose lengths
        are rounded up to their bucket: predicted there, a 200-token request planned as 224 was 12% dearer than
        it could run. The memory stays the plan's (what is provisioned and billed), and so does `feasible`: a
        plan that meets the SLO for the longer request meets it for this one."""
        own = self.shape.request(
            frequency, int(request.n_in), max(int(request.n_out_max), 1), slo_ttft_s=key.slo_ttft_s,
            slo_tpot_s=key.slo_tpot_s, confidence=key.confidence,
        )  # fmt: skip
        layers = [
            LayerPlan(tuple(p.remote), p.memory_gb, tuple(tuple(r.experts) for r in p.replicas)) for p in reply.layers
        ]
        est = estimate(own, layers, self.profile, prices, self.limits, main_gb=(reply.main_gpu_gb, reply.main_cpu_gb))
        reply.ttft_s, reply.tpot_s, reply.cost_main, reply.cost_remote = (
            est.ttft_s, est.tpot_s, est.cost_main, est.cost_remote,
        )  # fmt: skip

    def _request(self, key: PlanKey):
        return self.shape.request(
            key.frequency, key.n_in, key.n_out, slo_ttft_s=key.slo_ttft_s, slo_tpot_s=key.slo_tpot_s,
            confidence=key.confidence,
        )  # fmt: skip

    def _running(self, request: scheduler_pb2.PlanRequest) -> list[RunningFunction]:
        """The running functions of the request, per planned layer; ValueError names a malformed one."""
        for name in ("function_keep_alive_s", "recent_requests"):
            value = getattr(request, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        position = {layer: i for i, layer in enumerate(self.moe_layers)}
        out = []
        for n, f in enumerate(request.running):
            if len(f.layers) != len(f.experts) or not f.experts or f.memory_mb == 0:
                raise ValueError(f"running function {n}: needs as many layers as experts (>= 1) and memory_mb > 0")
            by_layer: dict[int, list[int]] = {}
            for layer, expert in zip(f.layers, f.experts, strict=True):
                if layer not in position or not 0 <= expert < self.shape.experts:
                    raise ValueError(f"running function {n}: expert ({layer}, {expert}) is not in the model")
                by_layer.setdefault(position[layer], []).append(expert)
            out += [RunningFunction(i, tuple(sorted(e)), f.memory_mb / 1024) for i, e in by_layer.items()]
        return out

    def _prefer_running(self, reply, planning, running: list[RunningFunction], prices: Prices, request):
        """Rewrite `reply` (in place) as the plan that reuses running functions where that is cheaper."""
        planned = [
            LayerPlan(tuple(p.remote), p.memory_gb, tuple(tuple(r.experts) for r in p.replicas)) for p in reply.layers
        ]
        choice = prefer_running(
            planning, planned, running, self.profile, prices, self.limits, request.function_keep_alive_s,
            request.recent_requests or 1.0, request.function_memory_budget_mb / 1024 or None,
            sum(f.memory_mb for f in request.running) / 1024, self.price_evictions,
        )  # fmt: skip
        del reply.layers[:]
        reply.layers.extend(
            scheduler_pb2.PlannedLayer(
                layer=layer, remote=list(p.remote), memory_gb=p.memory_gb,
                replicas=[scheduler_pb2.PlannedReplica(experts=list(r)) for r in p.replicas],
            )
            for layer, p in zip(self.moe_layers, choice.layers, strict=True)
        )  # fmt: skip
        est = choice.estimate
        reply.main_gpu_gb, reply.main_cpu_gb, reply.feasible = choice.main_gpu_gb, choice.main_cpu_gb, choice.feasible
        reply.ttft_s, reply.tpot_s, reply.cost_main, reply.cost_remote = (
            est.ttft_s,
            est.tpot_s,
            est.cost_main,
            est.cost_remote,
        )
        reply.new_functions, reply.cost_starts = choice.new_functions, choice.start_cost
        reply.reused_layers[:] = [self.moe_layers[i] for i in choice.reused_layers]

    def _redis_key(self, signature: str) -> str:
        return f"{CACHE_PREFIX}{self.model_id}:{signature}"

    def _get(self, signature: str) -> scheduler_pb2.PlanReply | None:
        with self._lock:
            raw = self._local.get(signature)
            if raw is not None:
                self._local.move_to_end(signature)
        if raw is None and self.redis is not None:
            import redis

            try:
                text = self.redis.get(self._redis_key(signature))
            except redis.RedisError as e:
                self.redis_errors += 1
                log.warning("plan cache: Redis unreachable (%s); planning without it", e)
                text = None
            if text is not None:
                raw = json_format.Parse(text, scheduler_pb2.PlanReply()).SerializeToString()
                self._remember(signature, raw)
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        reply = scheduler_pb2.PlanReply()
        reply.ParseFromString(raw)
        return reply

    def _remember(self, signature: str, raw: bytes) -> None:
        with self._lock:
            self._local[signature] = raw
            while len(self._local) > LOCAL_CACHE:
                self._local.popitem(last=False)

    def _put(self, signature: str, reply: scheduler_pb2.PlanReply) -> None:
        self._remember(signature, reply.SerializeToString())
        if self.redis is None:
            return
        import redis

        try:
            self.redis.set(self._redis_key(signature), json_format.MessageToJson(reply), ex=CACHE_TTL_S)
        except redis.RedisError as e:
            self.redis_errors += 1
            log.warning("plan cache: Redis unreachable (%s); plan not cached there", e)
