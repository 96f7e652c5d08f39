"""Prometheus metrics: what each service measures itself, served at its own /metrics.

The gateway serves its metrics on its HTTP port (beside the OpenAI-compatible API); every other service on
`REMOE_<SERVICE>_METRICS_PORT` when set. Counters that a service already keeps (expert cache, function
platform) are read at scrape time by a collector, so there is one source for `remoe status` and /metrics.
"""

from prometheus_client import disable_created_metrics

# `*_created` series (a timestamp per counter) double the page and most scrapers ignore them.
disable_created_metrics()
