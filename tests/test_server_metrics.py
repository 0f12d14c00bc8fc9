"""Metrics: the library's counters and the request durations, scraped by Prometheus from a
port of their own while the app serves, never from the API's port."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import httpx
import pytest
from opentelemetry import trace

from securecache import Settings
from securecache.ops.dev import ServerInfo, free_port
from servers import public_api
from servers.settings import ServerSettings


def samples(exposition: str, name: str) -> dict[str, float]:
    """The samples of one metric family in Prometheus text format, by their label set."""
    found: dict[str, float] = {}
    for match in re.finditer(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", exposition, re.M):
        found[match.group(1) or ""] = float(match.group(2))
    return found


async def test_prometheus_endpoint_serves_cache_counters_and_request_latency(
    monkeypatch: pytest.MonkeyPatch,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
    make_securities: Any,
) -> None:
    """A miss then a hit: /metrics on SECURECACHE_METRICS_PORT counts one of each and has the
    requests' duration histogram, by route and status, and the requests in flight; the API's
    own port has no /metrics; the endpoint closes with the app."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    (sid,) = make_securities(1)
    port = free_port()
    settings = Settings(
        database_url=database.reader_url, redis_url=servers.redis_url, key_prefix=key_prefix
    )
    app = public_api.create_app(
        settings,
        server=ServerSettings(metrics_port=port),
        tracer_provider=trace.NoOpTracerProvider(),
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://public") as http,
    ):
        for _ in range(2):
            assert (await http.get(f"/securities/{sid}")).status_code == 200
        assert (await http.get("/metrics")).status_code == 404
        scraped = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics")
    assert scraped.status_code == 200
    text = scraped.text
    assert sum(samples(text, "securecache_cache_misses_total").values()) >= 1
    assert sum(samples(text, "securecache_cache_hits_total").values()) >= 1
    durations = samples(text, "http_server_request_duration_seconds_count")
    assert sum(durations.values()) >= 3
    by_route = [
        count
        for labels, count in durations.items()
        if 'http_route="/securities/{id}"' in labels and 'http_response_status_code="200"' in labels
    ]
    assert by_route == [2]
    assert samples(text, "http_server_active_requests")
    with pytest.raises(httpx.TransportError):
        await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_port_settings() -> None:
    """SECURECACHE_METRICS_PORT is read, 0 turns it off, the launcher's default applies only
    when it is unset, and a bad value names the variable."""
    read = ServerSettings.from_env
    assert read({}).metrics_port == 0
    assert read({}, default_metrics_port=9464).metrics_port == 9464
    assert read({"SECURECACHE_METRICS_PORT": "0"}, default_metrics_port=9464).metrics_port == 0
    assert read({"SECURECACHE_METRICS_PORT": "9999"}).metrics_port == 9999
    for bad in ("ninety", "70000", "-1"):
        with pytest.raises(ValueError, match="SECURECACHE_METRICS_PORT"):
            read({"SECURECACHE_METRICS_PORT": bad})
