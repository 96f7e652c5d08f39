"""The registries of the expert service and the backbone: collectors over the counters they already keep."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from remoe.metrics.cache import ExpertCacheCollector, per_service

CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
INSTANCE_STATES = ("cold", "starting", "warm")  # the local platform's; Knative's are "ready" / "not ready"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ExpertBatchCollector(Collector):
    """Batches an expert service (or function) computed and the seconds they took."""

    def __init__(self, servicer) -> None:
        self.servicer = servicer

    def collect(self) -> Iterator[Metric]:
        s = self.servicer
        batches, compute_s = s.batch_counts()
        rows = (
            ("remoe_expert_batches", "expert batches computed", batches),
            ("remoe_expert_compute_seconds", "seconds spent computing expert batches", compute_s),
        )
        yield from per_service(CounterMetricFamily, s.name, rows)


def expert_registry(servicer) -> CollectorRegistry:
    """An expert service's metrics: its cache and its batches."""
    registry = CollectorRegistry(auto_describe=True)
    executor = servicer.executor
    registry.register(
        ExpertCacheCollector(
            servicer.name, lambda: (executor.stats, executor.cache.resident_bytes, executor.cache.budget_bytes or 0)
        )
    )
    registry.register(ExpertBatchCollector(servicer))
    return registry


class BackboneCollector(Collector):
    """Requests in the backbone, where its batches went, and its functions' instances and cold starts."""

    def __init__(self, servicer) -> None:
        self.servicer = servicer

    def collect(self) -> Iterator[Metric]:
        s, executor = self.servicer, self.servicer.executor
        active, served = s.request_counts()
        yield _gauge("remoe_backbone_active_requests", "requests generating now", active)
        if s.engine is not None:
            decoding, prefilling, waiting = s.engine.snapshot()
            batch = GaugeMetricFamily(
                "remoe_backbone_batch_requests", "requests in the batch by state", labels=["state"]
            )
            for state, value in (("decoding", decoding), ("prefilling", prefilling), ("waiting", waiting)):
                batch.add_metric([state], value)
            yield batch
        yield _counter("remoe_backbone_requests", "requests generated to the end", served)
        yield _counter("remoe_backbone_function_retries", "batches re-sent to another replica", executor.retries)
        yield _counter(
            "remoe_backbone_function_fallbacks",
            "batches an expert service computed after every replica of their function failed",
            executor.fallbacks,
        )
        yield _counter(
            "remoe_backbone_function_cold_fallbacks",
            "batches an expert service computed while their function started",
            executor.cold_fallbacks,
        )
        yield _counter(
            "remoe_backbone_function_reused_experts",
            "plan experts sent to a function that was already running",
            executor.reused_experts,
        )
        yield _counter(
            "remoe_backbone_service_failovers",
            "batches an expert service failed and another computed",
            executor.failovers,
        )
        platform = executor.platform
        if platform is None:
            return
        instances = GaugeMetricFamily("remoe_function_instances", "function instances by state", labels=["state"])
        states = Counter(i.state for i in platform.status())
        for state in sorted(set(INSTANCE_STATES) | states.keys()):
            instances.add_metric([state], states.get(state, 0))
        yield instances
        records = list(getattr(platform, "cold_starts", None) or ())  # the local platform's log of finished starts
        starts = SummaryMetricFamily(
            "remoe_function_cold_start_seconds", "function cold starts: spawn to serving", labels=["reason"]
        )
        for reason in sorted({"warm-up", "on demand"} | {r.reason for r in records}):
            mine = [r.ready_s for r in records if r.reason == reason]
            starts.add_metric([reason], count_value=len(mine), sum_value=sum(mine))
        yield starts


class BatchHistograms:
    """The continuous batch's forwards and admissions as histograms (a BatchObserver)."""

    REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
    TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Histogram(
            "remoe_backbone_step_requests",
            "requests per decode step (one forward for all of them)",
            buckets=self.REQUEST_BUCKETS,
            registry=registry,
        )
        self.tokens = Histogram(
            "remoe_backbone_step_tokens",
            "tokens per forward, by kind (decode steps, prefill chunks)",
            ["kind"],
            buckets=self.TOKEN_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "remoe_backbone_queue_wait_seconds",
            "seconds a request waited for a place in the batch",
            buckets=CALL_BUCKETS,
            registry=registry,
        )

    def forward(self, requests: int, tokens: int, decode: bool) -> None:
        if decode:
            self.requests.observe(requests)
        self.tokens.labels("decode" if decode else "prefill").observe(tokens)

    def admitted(self, queue_wait_s: float) -> None:
        self.queue_wait.observe(queue_wait_s)


def backbone_registry(servicer) -> CollectorRegistry:
    """The backbone's metrics; its in-process expert cache (when it has no expert services) too."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BackboneCollector(servicer))
    if servicer.engine is not None:  # the batch never preempts a request, so there is no preemption count
        servicer.engine.observer = BatchHistograms(registry)
    local = servicer.executor.local
    if local is not None:
        registry.register(ExpertCacheCollector("backbone-local", lambda: (local.stats, local.cache.resident_bytes, 0)))
    return registry


class PlanCacheCollector(Collector):
    """The scheduler's plan cache, from its own counters."""

    def __init__(self, service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        yield _counter("remoe_scheduler_plan_cache_hits", "plans answered from the cache", s.hits)
        yield _counter("remoe_scheduler_plan_cache_misses", "plans computed", s.misses)
        yield _counter("remoe_scheduler_redis_errors", "plan cache calls Redis failed", s.redis_errors)


class RequestMetrics:
    """Requests a servicer answered by outcome and how long each took: `with metrics.time("Predict", label):`."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self.calls = PromCounter(
            f"remoe_{service}_calls", "calls answered, by method and outcome", ["method", "outcome"], registry=registry
        )
        self.seconds = Histogram(
            f"remoe_{service}_call_seconds",
            "seconds to answer a call",
            ["method"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )

    @contextmanager
    def time(self, method: str, outcome: str = "ok") -> Iterator[dict]:
        """Yields a dict whose "outcome" the caller may change (e.g. to the forecast's source)."""
        state = {"outcome": outcome}
        start = time.perf_counter()
        try:
            yield state
        except BaseException:
            state["outcome"] = "error"
            raise
        finally:
            self.seconds.labels(method).observe(time.perf_counter() - start)
            self.calls.labels(method, state["outcome"]).inc()
