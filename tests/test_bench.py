"""The benchmark harness: a tiny run end to end, and the pieces that turn figures into claims.

No timing is asserted anywhere: the figures of a tiny run on a busy machine mean nothing.
What is checked is that the harness runs every workload on real servers and writes every
file it promises (results, table, chart, page), and that the parsing and the PASS/FAIL logic
behind the page are right.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.constant_app import app as constant_app
from bench.goals import GOALS, evaluate
from bench.web import http_row, parse_wrk
from bench.workloads import expected_pairs
from fix_servers import DATABASE_PREFIX
from securecache.ops.dev import ServerInfo

# Measured in every complete run: the library and its baselines (peers are optional).
REQUIRED = [
    ("lone_get", "floor"),
    ("lone_get", "securecache"),
    ("concurrent_get_64", "floor"),
    ("concurrent_get_64", "securecache"),
    ("get_many_100", "floor"),
    ("get_many_100", "securecache"),
    ("sync_lone_get", "floor"),
    ("sync_lone_get", "securecache"),
    ("sync_get_many_100", "securecache"),
    ("near_hit", "cachetools"),
    ("miss_sequential", "securecache"),
    ("miss_sequential", "naive"),
    ("miss_concurrent_64", "securecache"),
    ("miss_concurrent_64", "naive"),
    ("cold_herd_500", "securecache"),
    ("cold_herd_500", "naive"),
    ("put", "securecache"),
]

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/securities/SEC000001
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.21ms    1.02ms  20.00ms   80.00%
    Req/Sec    10.00k     1.00k   12.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    3.50ms
     90%    4.00ms
     99%    1.20s
  200000 requests in 10.00s, 30.00MB read
  Non-2xx or 3xx responses: 5
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  20000.50
Transfer/sec:      3.00MB
"""


def test_tiny_run_writes_every_workload_and_the_chart(
    servers: ServerInfo, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    """A tiny run on the suite's servers has a row for every (workload, contender), the
    library's and baselines' rows measured, a valid SVG chart and the page with every goal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURECACHE_", "OTEL_"))}
    env["SECURECACHE_DATABASE_URL"] = servers.admin_url
    env["SECURECACHE_REDIS_URL"] = servers.redis_url
    argv = [sys.executable, "-m", "bench", "--ops", "20", "--repeat", "1", "--keys", "400"]
    argv += ["--herd", "50", "--no-http", "--out", str(tmp_path), "--docs", str(tmp_path)]
    # The suite's database prefix: a crashed run's database is swept like a test's.
    argv += ["--database", DATABASE_PREFIX + "bench_" + secrets.token_hex(4)]
    argv += ["--key-prefix", "tb" + secrets.token_hex(4)]
    done = subprocess.run(
        argv,
        cwd=pytestconfig.rootpath,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    data: dict[str, Any] = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["workload"], r["contender"]): r for r in data["results"]}
    assert [(r["workload"], r["contender"]) for r in data["results"]] == expected_pairs()
    for pair in REQUIRED:
        assert rows[pair]["available"], (pair, rows[pair]["note"])
        assert rows[pair]["keys_per_second"] > 0
        assert rows[pair]["p50_us"] <= rows[pair]["p99_us"]
    assert rows[("cold_herd_500", "securecache")]["queries"] >= 1
    for pair in (("http_get_security", "constant"), ("http_get_security", "public_api")):
        assert rows[pair]["note"] == "not available: --no-http given"

    meta = data["meta"]
    assert meta["command"].startswith("python -m bench --ops 20")
    assert meta["machine"]["cores"] >= 1
    assert meta["machine"]["cpu_model"]
    for name in ("redis", "psycopg", "uvicorn", "starlette", "postgresql_server", "redis_server"):
        assert meta["versions"][name], name
    assert "hiredis" in meta["versions"]

    svg = ET.parse(tmp_path / "benchmarks.svg").getroot()  # noqa: S314 - written by this run
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    page = (tmp_path / "benchmarks.md").read_text()
    assert "![" in page
    assert "benchmarks.svg" in page
    for goal in GOALS:
        assert goal.text in page
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") == len(expected_pairs()) + 1  # and the separator row


def test_parse_wrk_reads_rate_latency_and_errors() -> None:
    """Requests/s, p50 and p99 in microseconds whatever wrk's unit, and every error counted."""
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed == {
        "requests_per_second": 20000.5,
        "p50_us": 812.0,
        "p99_us": 1_200_000.0,
        "requests": 200000,
        "non_2xx": 5,
        "socket_errors": 3,
    }
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk("Requests/sec:  10.0\n")


def test_http_rounds_give_medians_and_keep_every_error() -> None:
    """A contender's rounds become one row: the median rate and latencies, every round's
    rate in the note and the row, and the errors of all rounds summed (none hidden)."""
    rounds = [
        {"requests_per_second": r, "p50_us": p50, "p99_us": p99, "requests": n,
         "non_2xx": bad, "socket_errors": 0, "server_log_lines": 2}
        for r, p50, p99, n, bad in (
            (900.0, 300.0, 900.0, 9000, 0),
            (1000.0, 100.0, 700.0, 10000, 2),
            (1100.0, 200.0, 800.0, 11000, 1),
        )
    ]  # fmt: skip
    row = http_row("public_api", rounds, "as shipped", duration=10)
    assert (row["requests_per_second"], row["p50_us"], row["p99_us"]) == (1000.0, 200.0, 800.0)
    assert row["rounds_requests_per_second"] == [900.0, 1000.0, 1100.0]
    assert row["errors"] == 3
    assert row["note"] == (
        "as shipped; median of 3 rounds (900, 1,000, 1,100 req/s); 3 non-2xx and 0 socket errors"
    )


async def test_constant_app_answers_a_security() -> None:
    """The constant endpoint routes ``/securities/{id}`` and answers Security-shaped JSON."""
    transport = httpx.ASGITransport(constant_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        reply = await client.get("/securities/SEC000001")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    assert set(reply.json()) == {"id", "name", "symbol", "exchange", "version", "updated_at"}


def _row(workload: str, contender: str, **figures: float) -> dict[str, Any]:
    return {"workload": workload, "contender": contender, "available": True, **figures}


def test_goals_pass_fail_and_not_measured() -> None:
    """A ratio within its goal passes, one outside fails, and a missing side is N/A."""
    results = [
        _row("lone_get", "floor", p50_us=100.0, keys_per_second=1000),
        _row("lone_get", "securecache", p50_us=110.0, keys_per_second=900),
        _row("concurrent_get_64", "floor", keys_per_second=1000),
        _row("concurrent_get_64", "securecache", keys_per_second=5000),
        {"workload": "concurrent_get_64", "contender": "aiocache", "available": False},
        _row("cold_herd_500", "securecache", queries=1.0),
    ]
    checks = {c.goal.id: c for c in evaluate(results)}
    assert checks["lone_get"].status == "PASS"
    assert checks["lone_get"].value == pytest.approx(1.1)
    assert checks["concurrent_vs_bare"].status == "FAIL"
    assert checks["concurrent_vs_aiocache"].status == "N/A"
    assert checks["herd_queries"].status == "PASS"
    assert checks["http"].status == "N/A"
