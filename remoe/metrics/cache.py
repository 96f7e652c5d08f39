"""Expert cache metrics, read from the cache's own counters at scrape time (one series per service)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from remoe.experts.cache import CacheStats


class ExpertCacheCollector(Collector):
    """`read()` -> (stats, resident bytes, budget bytes or 0) of one expert cache, labelled `service`."""

    def __init__(self, service: str, read: Callable[[], tuple[CacheStats, int, int]]) -> None:
        self.service = service
        self.read = read

    def collect(self) -> Iterator[Metric]:
        stats, resident, budget = self.read()
        counters = (
            ("remoe_expert_cache_hits", "expert uses served from memory", stats.hits),
            ("remoe_expert_cache_misses", "expert uses that loaded the expert from safetensors first", stats.loads),
            ("remoe_expert_cache_evictions", "experts dropped to stay within the budget", stats.evictions),
            ("remoe_expert_loaded_bytes", "bytes of expert weights loaded", stats.bytes_loaded),
            ("remoe_expert_load_seconds", "seconds spent loading experts", stats.load_seconds),
        )
        yield from per_service(CounterMetricFamily, self.service, counters)
        gauges = (
            ("remoe_expert_resident_bytes", "bytes of expert weights in memory", resident),
            ("remoe_expert_budget_bytes", "bound on resident bytes (0: none)", budget),
        )
        yield from per_service(GaugeMetricFamily, self.service, gauges)


def per_service(kind: type, service: str, rows) -> Iterator[Metric]:
    """One family of `kind` per (name, doc, value) row, its one sample labelled service=`service`."""
    for name, doc, value in rows:
        family = kind(name, doc, labels=["service"])
        family.add_metric([service], value)
        yield family
