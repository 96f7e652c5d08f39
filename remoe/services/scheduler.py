"""Scheduler service: Plan(forecast, n_in, n_out_max, SLO, prices) -> the cheapest placement that meets the SLO.

python -m remoe.services.scheduler --model DIR [--profile profile.json] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import hashlib
import logging

import grpc
from prometheus_client import CollectorRegistry

from remoe.metrics.exposition import serve_metrics
from remoe.metrics.services import PlanCacheCollector, RequestMetrics
from remoe.ports import side_port_file
from remoe.proto import scheduler_pb2, scheduler_pb2_grpc
from remoe.scheduler.plan_service import PlanService
from remoe.scheduler.problem import Prices
from remoe.scheduler.profile_file import load_profile
from remoe.scheduler.shape_probe import facts_of_model
from remoe.server import startup
from remoe.server.common import Server, setup_logging
from remoe.settings import SchedulerSettings, load_settings
from remoe.transport.tensor_wire import TensorDecodeError

log = logging.getLogger(__name__)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, service: PlanService) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(PlanCacheCollector(service))
        self.metrics = RequestMetrics("scheduler", self.registry)

    def Plan(self, request, context):
        try:
            with self.metrics.time("Plan"):
                return self.service.plan(request)
        except (ValueError, TensorDecodeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))


def build_service(
    model_dir: str, profile_path: str | None, redis_url: str | None, prices: Prices, price_evictions: bool = True
) -> PlanService:
    facts = facts_of_model(model_dir)  # in a child process: this one never imports torch (see shape_probe)
    shape = facts.shape
    profile = load_profile(profile_path) if profile_path else None
    if profile is None:
        log.warning("no --profile: planning with built-in placeholder speeds (run `remoe profile` on this machine)")
    model_id = f"{shape.name}-{hashlib.sha1(facts.resolved_path.encode()).hexdigest()[:12]}"
    return PlanService(
        shape, facts.layer_indices, profile, prices, redis_url=redis_url, model_id=model_id,
        price_evictions=price_evictions,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    startup.begin()  # the module's imports are done: what follows is this service's own start
    s = load_settings(SchedulerSettings, argv, "python -m remoe.services.scheduler", __doc__.split("\n")[0])
    setup_logging("scheduler", s.verbose)
    defaults = Prices()
    prices = Prices(s.cpu_price or defaults.cpu_gb_s, s.gpu_price or defaults.gpu_gb_s)
    server = Server("scheduler", s.host, s.port, s.workers)
    with startup.step("model shape and profile"):
        service = build_service(
            str(s.model), str(s.profile) if s.profile else None, s.redis_url, prices, s.price_evictions
        )
    servicer = SchedulerServicer(service)
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server.server)
    server.add(scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name)
    if s.metrics_port is not None:
        serve_metrics(servicer.registry, s.host, s.metrics_port, "scheduler", side_port_file(s.ready_file, "metrics"))
    server.start(s.ready_file)
    server.wait_for_signal()


if __name__ == "__main__":
    main()
