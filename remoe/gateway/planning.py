"""A request's plan: the predictor's forecast of its experts (or, with the predictor down, the global prior), then
the scheduler's cheapest plan for it. Without a scheduler, or when planning fails: None, the default placement."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
import numpy as np

from remoe.predictor.prior import GlobalPrior
from remoe.proto import gateway_pb2, predictor_pb2
from remoe.scheduler.client import PlanClient
from remoe.scheduler.problem import Prices
from remoe.scheduler.shape import ModelShape
from remoe.transport import tensor_codec

log = logging.getLogger(__name__)
PREDICT_TIMEOUT_S = 1.0  # a forecast that takes longer is skipped, not waited for


@dataclass
class PlanningConfig:
    """Where plans come from and where metering goes (all optional: without them, the default placement)."""

    scheduler_address: str | None = None
    ledger_redis_url: str | None = None
    slo_ttft_s: float = 0.0  # default SLOs for requests that bring none (0 = none)
    slo_tpot_s: float = 0.0
    prices: Prices = field(default_factory=Prices)
    prior_redis_url: str | None = None  # the predictor's global prior: plans use it while the predictor is down
    warm_aware: bool = True  # plans reuse the functions that run and price new ones' starts


class RequestPlanner:
    def __init__(
        self,
        shape: ModelShape,
        config: PlanningConfig,
        predictor=None,  # a PredictorService stub, or None: no forecasts
        scheduler: PlanClient | None = None,  # None: no plans (the backbone's own placement)
        prior: GlobalPrior | None = None,
        running=None,  # () -> the backbone's RunningReply, or None when it cannot say
    ) -> None:
        self.shape = shape
        self.config = config
        self.predictor = predictor
        self.scheduler = scheduler
        self.prior = prior
        self.running = running
        self._planned: deque[float] = deque()  # when recent requests were planned (monotonic s)
        self._planned_lock = threading.Lock()

    def forecast(self, prompt: str, ids: list[int]):
        """The predictor's forecast (a PredictReply), or None: a forecast must never fail or stall a request."""
        if self.predictor is None:
            return None
        try:
            return self.predictor.Predict(
                predictor_pb2.PredictRequest(prompt=prompt, token_ids=ids), timeout=PREDICT_TIMEOUT_S
            )
        except grpc.RpcError as e:
            log.warning("predictor unavailable, planning without a forecast (%s)", e.code().name)
            return None

    def plan(self, request: gateway_pb2.GenerateRequest, forecast, n_in: int):
        """(the scheduler's plan for this request or None, whether it was planned from the global prior)."""
        if self.scheduler is None:
            return None, False
        frequency = None
        if forecast is not None:
            decoded = tensor_codec.decode(forecast.frequency, "frequency", dtype="float32", rank=2).numpy()
            if decoded.shape == (self.shape.layers, self.shape.experts):
                frequency = decoded.astype(np.float64)
        elif self.prior is not None:  # the predictor is down: every past request's activation, straight from Redis
            frequency = self.prior.frequency()
        plan = self.scheduler.plan(
            frequency,
            n_in,
            int(request.sampling.max_new_tokens),
            request.slo_ttft_s or self.config.slo_ttft_s,
            request.slo_tpot_s or self.config.slo_tpot_s,
            *self._running(),
        )
        return plan, plan is not None and forecast is None and frequency is not None

    def _running(self) -> tuple:
        """(the backbone's RunningReply or None, requests planned within its keep-alive, this one included): a
        new function's keep-alive is shared by the requests that come while it is held."""
        running = self.running() if self.config.warm_aware and self.running is not None else None
        if running is None:
            return None, 0
        now = time.monotonic()
        with self._planned_lock:
            self._planned.append(now)
            while self._planned and now - self._planned[0] > running.keep_alive_s:
                self._planned.popleft()
            return running, len(self._planned)
