"""The gateway's metrics: what it sees of each request, from arrival to its last token."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; from a warm tiny model (milliseconds) to a large one behind cold functions (tens of seconds).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JS_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)  # mean JS divergence, natural log: at most ln 2
COST_BUCKETS = tuple(10.0**e for e in range(-9, 0))  # dollars per request


class GatewayMetrics:
    """One registry per gateway (tests run several in a process). Outcomes are gRPC status code names, the same
    for the SDK and the HTTP API: OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE, CANCELLED, ..."""

    def __init__(self, active: Callable[[], int], max_requests: int) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("remoe_gateway_requests", "Generate requests by outcome", ["code"], registry=r)
        self.ttft = Histogram(
            "remoe_gateway_ttft_seconds", "arrival to first token, at the gateway", buckets=TTFT_BUCKETS, registry=r
        )
        self.tpot = Histogram(
            "remoe_gateway_tpot_seconds", "mean time per output token after the first", buckets=TPOT_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("remoe_gateway_prompt_tokens", "prompt tokens of served requests", registry=r)
        self.completion_tokens = Counter("remoe_gateway_completion_tokens", "tokens generated", registry=r)
        self.active = Gauge("remoe_gateway_active_requests", "requests admitted and not yet finished", registry=r)
        self.active.set_function(active)
        self.limit = Gauge("remoe_gateway_max_requests", "requests served at once; more are refused", registry=r)
        self.limit.set(max_requests)
        self.forecasts = Counter(
            "remoe_gateway_forecasts", "served requests by where their forecast came from", ["source"], registry=r
        )
        self.forecast_js = Histogram(
            "remoe_gateway_forecast_divergence",
            "mean JS divergence over layers, forecast vs the prefill's actual expert use",
            ["source"],
            buckets=JS_BUCKETS,
            registry=r,
        )
        self.cost = Histogram(
            "remoe_gateway_request_cost_dollars",
            "each request's metered cost (main model + functions), dollars",
            buckets=COST_BUCKETS,
            registry=r,
        )

    def served(self, n_in: int, n_out: int, ttft_s: float, tpot_s: float | None) -> None:
        self.prompt_tokens.inc(n_in)
        self.completion_tokens.inc(n_out)
        self.ttft.observe(ttft_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)

    def forecast(self, source: str, js: float | None) -> None:
        self.forecasts.labels(source or "none").inc()
        if js is not None:
            self.forecast_js.labels(source).observe(js)
