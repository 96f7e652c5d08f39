"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables.

OTEL_TRACES_EXPORTER: "none" (default), "console", or "otlp" (OTLP/gRPC to OTEL_EXPORTER_OTLP_ENDPOINT).
OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG choose sampling as the SDK documents. Server calls are
instrumented; outgoing calls carry the context explicitly (`outgoing_metadata`), and each expert batch
carries its request's context in the message, since many requests share one expert stream.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import context, trace

log = logging.getLogger(__name__)
_done = False
# Whether this process exports spans. Off, there is no context worth carrying, and opentelemetry.propagate (its
# baggage regexes: a fifth of a second, a tenth of a lean function's start) is never imported.
_enabled = False


def setup_tracing(service_name: str) -> None:
    global _done, _enabled
    if _done:
        return
    _done = True
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorServer
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        log.warning("OTEL_TRACES_EXPORTER=%r is not one of none, console, otlp; tracing stays off", exporter_name)
        return
    name = os.environ.get("OTEL_SERVICE_NAME", f"remoe-{service_name}")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcInstrumentorServer().instrument()
    _enabled = True


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def outgoing_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (empty when tracing is off)."""
    if not _enabled:
        return []
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def context_from(carrier) -> context.Context:
    """The trace context a caller sent (the current, empty one when this process does not trace)."""
    if not _enabled:
        return context.get_current()
    from opentelemetry import propagate

    return propagate.extract(dict(carrier))
