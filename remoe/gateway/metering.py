"""Each served request's cost: into the gateway's metrics, and one record to the metering ledger (exactly once by
request id; buffered while Redis is down)."""

from __future__ import annotations

from remoe.metrics.gateway import GatewayMetrics
from remoe.scheduler.estimate import main_memory_gb
from remoe.scheduler.ledger import Ledger, meter
from remoe.scheduler.problem import Limits, Prices
from remoe.scheduler.shape import ModelShape


class Metering:
    def __init__(self, shape: ModelShape, prices: Prices, ledger: Ledger | None, metrics: GatewayMetrics) -> None:
        self.shape = shape
        self.prices = prices
        self.ledger = ledger
        self.metrics = metrics
        # The main model's memory when no plan says otherwise: backbone on the GPU, every expert on the CPU.
        self.default_memory = main_memory_gb(shape.request(None, 1, 0), [()] * shape.layers, Limits())

    def meter(self, request_id: str, usage, plan) -> None:
        prices = self.prices
        if plan is not None:
            memory, prices = (plan.main_gpu_gb, plan.main_cpu_gb), Prices(plan.cpu_gb_s, plan.gpu_gb_s)
        else:
            memory = self.default_memory
        record = meter(request_id, self.shape.name, usage, *memory, prices.cpu_gb_s, prices.gpu_gb_s, plan)
        self.metrics.cost.observe(record.cost)
        if self.ledger is not None:
            self.ledger.write(record)
