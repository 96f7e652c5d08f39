"""The gateway's side of planning: ask the scheduler service for a request's plan, and never let planning fail
or stall a request (no scheduler, or one that is down or slow, means the backbone's own placement: every
expert local, which is always safe)."""

from __future__ import annotations

import logging

import grpc
import numpy as np
import torch

from remoe.proto import scheduler_pb2, scheduler_pb2_grpc
from remoe.transport import tensor_codec
from remoe.transport.channel import insecure_channel

log = logging.getLogger(__name__)
PLAN_TIMEOUT_S = 2.0


class PlanClient:
    def __init__(self, address: str, layers: int, experts: int) -> None:
        self.stub = scheduler_pb2_grpc.SchedulerServiceStub(insecure_channel(address))
        self.address, self.layers, self.experts = address, layers, experts
        self.failures = 0

    def plan(
        self,
        frequency: np.ndarray | None,
        n_in: int,
        n_out_max: int,
        slo_ttft_s: float,
        slo_tpot_s: float,
        running=None,  # the backbone's RunningReply: plans price new functions' starts and reuse these
        recent_requests: int = 0,  # requests planned within the last keep-alive, this one included
    ) -> scheduler_pb2.PlanReply | None:
        """frequency [L, E] (None: every expert equally likely). None when the scheduler cannot answer."""
        if frequency is None:
            frequency = np.full((self.layers, self.experts), 1.0 / self.experts)
        request = scheduler_pb2.PlanRequest(
            frequency=tensor_codec.encode(torch.as_tensor(frequency, dtype=torch.float32)),
            n_in=n_in,
            n_out_max=n_out_max,
            slo_ttft_s=slo_ttft_s,
            slo_tpot_s=slo_tpot_s,
        )
        if running is not None:
            request.price_starts = True
            request.function_keep_alive_s = running.keep_alive_s
            request.recent_requests = recent_requests
            request.function_memory_budget_mb = running.memory_budget_mb
            request.running.extend(
                scheduler_pb2.RunningFunction(layers=f.layers, experts=f.experts, memory_mb=f.memory_mb)
                for f in running.functions
            )
        try:
            return self.stub.Plan(request, timeout=PLAN_TIMEOUT_S)
        except grpc.RpcError as e:
            self.failures += 1
            log.warning(
                "scheduler %s: %s (%s); serving with the default placement", self.address, e.code().name, e.details()
            )
            return None
