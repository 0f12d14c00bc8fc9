"""The OpenTelemetry SDK for the servers, configured from the standard ``OTEL_*`` variables.

The library only speaks the OpenTelemetry API; a process that serves HTTP decides where spans
go. Spans are exported over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; without one the servers still trace (so trace
ids propagate) but export nothing, and say so once at start-up. Sampling follows
``OTEL_TRACES_SAMPLER``; ``OTEL_SDK_DISABLED=true`` turns tracing off altogether.
"""

from __future__ import annotations

import os

import attrs
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

PUBLIC_SERVICE_NAME = "securecache-public-api"
INTERNAL_SERVICE_NAME = "securecache-internal-api"

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@attrs.frozen
class Tracing:
    """A tracer provider and a one-line account of where its spans go (logged at start-up)."""

    provider: trace.TracerProvider
    description: str

    def flush(self) -> None:
        """Push out spans still buffered, leaving the provider usable (one the caller owns)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.force_flush()

    def shutdown(self) -> None:
        """Push out spans still buffered and stop the exporters and their threads (for a
        provider :func:`tracing_from_env` built, once the application is done with it)."""
        if isinstance(self.provider, TracerProvider):
            self.provider.shutdown()


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def tracing_from_env(default_service_name: str) -> Tracing:
    """Build the SDK tracer provider the ``OTEL_*`` variables describe.

    ``service.name`` comes from ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``), else
    ``default_service_name``, so that two APIs in one process stay apart in a trace viewer.
    The provider is not made global: each application passes its own to its middleware and
    its :class:`~securecache.SecureCache`. With an OTLP endpoint this starts an exporting
    thread, so the servers call it when their lifespan starts, never at import, and
    :meth:`Tracing.shutdown` it when the lifespan ends.
    """
    env = os.environ
    if _true(env.get("OTEL_SDK_DISABLED")):
        return Tracing(trace.NoOpTracerProvider(), "tracing disabled (OTEL_SDK_DISABLED)")

    resource = Resource.create()
    name = str(resource.attributes.get(SERVICE_NAME, ""))
    if not name or name.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
        name = default_service_name
    provider = TracerProvider(resource=resource)

    exporters = {
        e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if e.strip()
    }
    sent_to: list[str] = []
    if "console" in exporters:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        sent_to.append("the console")
    endpoint = next((env[v] for v in _ENDPOINT_VARS if env.get(v)), None)
    if "otlp" in exporters and endpoint:
        # Imported here: the exporter pulls in requests and protobuf, needless without a collector.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        sent_to.append(f"OTLP/HTTP at {endpoint}")
    if sent_to:
        return Tracing(provider, f"tracing {name}: spans exported to {' and '.join(sent_to)}")
    return Tracing(
        provider,
        f"tracing {name}: no OTLP endpoint configured (OTEL_EXPORTER_OTLP_ENDPOINT), "
        "spans are not exported",
    )
