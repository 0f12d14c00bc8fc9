"""HTTP: the public API as a real server process under wrk, beside a constant-JSON endpoint.

Both servers are started the same way, one at a time, on the same machine as wrk: through the
servers' launcher (``python -m servers public``, and :mod:`bench.constant_app` through the same
``servers.run`` functions) when the launcher exists, otherwise both with the same ``python -m
uvicorn MODULE:app`` command line. The public API runs as shipped: the reader's database URL,
no trace exporter (no ``OTEL_*`` variables: then neither the servers nor the library make
spans), Prometheus metrics on, its own logging (the access log off: ``SECURECACHE_ACCESS_LOG``
unset, for both servers alike); once without and once with the near cache
(``SECURECACHE_LOCAL_CACHE_SIZE``). The cache is warmed before wrk starts; wrk's own latency
distribution gives p50 and p99.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final, Literal

import attrs
import orjson

from bench.data import Context
from bench.measure import Results, unavailable
from bench.workloads import HTTP_CONTENDERS, LABELS
from securecache.ops.dev import LOOPBACK, free_port

ROOT: Final = Path(__file__).resolve().parents[1]
PATH: Final = "/securities/SEC000001"
WRK_MISSING: Final = (
    "wrk is not installed; on Debian or Ubuntu: apt-get update && apt-get install -y wrk"
)
NEAR_ENV: Final = {
    "SECURECACHE_LOCAL_CACHE_SIZE": "10000",
    "SECURECACHE_LOCAL_CACHE_TTL_SECONDS": "1.0",
}
NO_METRICS_ENV: Final = {"SECURECACHE_METRICS_PORT": "0"}
_UNITS: Final = {"us": 1.0, "ms": 1e3, "s": 1e6}


class ServerFailed(Exception):
    """A server did not start or did not answer as expected."""


@attrs.frozen
class Launch:
    """How both servers are started, so that they run under the same uvicorn settings."""

    mode: Literal["launcher", "uvicorn"]

    def argv(self, contender: str, port: int) -> list[str]:
        address = ["--host", LOOPBACK, "--port", str(port)]
        if self.mode == "launcher":
            if contender == "constant":
                return [sys.executable, "-m", "bench.constant_app", *address]
            return [sys.executable, "-m", "servers", "public", *address]
        module = "bench.constant_app:app" if contender == "constant" else "servers.public_api:app"
        return [sys.executable, "-m", "uvicorn", module, *address]

    def describe(self) -> str:
        if self.mode == "launcher":
            return (
                "python -m servers public; the constant app through the same servers.run "
                "functions (same uvicorn.Config, logging and event loop: asyncio.run, the "
                "default asyncio loop)"
            )
        return (
            "python -m uvicorn servers.public_api:app / bench.constant_app:app with the same "
            "command-line settings (uvicorn's defaults: --loop auto, so uvloop when installed; "
            "python -m servers is not available in this tree)"
        )


def find_launch() -> Launch | None:
    """The launcher when it exists, else plain uvicorn on the app module, else None."""
    if importlib.util.find_spec("servers") is None:
        return None
    if importlib.util.find_spec("servers.__main__") is not None:
        return Launch("launcher")
    if importlib.util.find_spec("servers.public_api") is not None:
        return Launch("uvicorn")
    return None


def wrk_version(wrk: str) -> str:
    """``wrk -v`` prints its version and exits with status 1."""
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def parse_wrk(text: str) -> dict[str, Any]:
    """Requests/s, the latency distribution and error counts from ``wrk --latency`` output."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    if rate is None:
        raise ValueError("no 'Requests/sec' line in wrk's output")
    latency = {
        int(m.group(1)): float(m.group(2)) * _UNITS[m.group(3)]
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    }
    if 50 not in latency or 99 not in latency:
        raise ValueError("no latency distribution in wrk's output (was --latency given?)")
    total = re.search(r"^\s+(\d+) requests in", text, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return {
        "requests_per_second": float(rate.group(1)),
        "p50_us": round(latency[50], 1),
        "p99_us": round(latency[99], 1),
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(g) for g in sockets.groups()) if sockets else 0,
    }


def server_env(ctx: Context, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a server: ours, less any SECURECACHE_*/OTEL_* the caller had set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECURECACHE_", "OTEL_"))}
    env.update(
        SECURECACHE_DATABASE_URL=ctx.dataset.reader_url,
        SECURECACHE_REDIS_URL=ctx.redis_url,
        SECURECACHE_KEY_PREFIX=ctx.prefix,
        # A port of its own for the Prometheus endpoint, where the servers have one.
        SECURECACHE_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 - loopback http
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tail(log: IO[bytes]) -> str:
    """The gist of a server's output: its last error line, else its last lines."""
    log.flush()
    log.seek(0)
    lines = [x.strip() for x in log.read().decode(errors="replace").splitlines() if x.strip()]
    errors = [x for x in lines if re.match(r"[\w.]+(Error|Exception): ", x)]
    return (errors[-1] if errors else " | ".join(lines[-3:]))[-400:] or "no output"


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: IO[bytes], timeout: float) -> None:
    """Poll ``url`` until it answers 200 with the expected security (which warms the cache)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"exited with status {proc.returncode}: {_tail(log)}")
        try:
            status, body = _get(url, timeout=2.0)
        except OSError as exc:
            last = str(exc)
        else:
            if status == 200 and orjson.loads(body).get("id") == "SEC000001":
                return
            last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.2)
    raise ServerFailed(f"not ready after {timeout:.0f} s ({last}); {_tail(log)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful drain), then SIGKILL if it takes too long: only our own child."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure_one(
    ctx: Context,
    launch: Launch,
    contender: str,
    extra_env: dict[str, str],
    wrk_argv: list[str],
) -> dict[str, Any]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}{PATH}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            launch.argv(contender, port),
            cwd=ROOT,
            env=server_env(ctx, extra_env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(url, proc, log, timeout=60)
            for _ in range(200):
                _get(url)
            out = subprocess.run(  # noqa: S603
                [*wrk_argv, url], capture_output=True, text=True, check=False, timeout=600
            )
            if out.returncode != 0:
                raise ServerFailed(f"wrk failed: {out.stderr.strip() or out.stdout.strip()}")
            if proc.poll() is not None:
                raise ServerFailed(f"the server exited during the run: {_tail(log)}")
            parsed = parse_wrk(out.stdout)
        finally:
            stop(proc)
        log.seek(0)
        parsed["server_log_lines"] = sum(
            chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b"")
        )
    return parsed


def combine(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One contender's rounds as one result: the median of each figure, the counts summed
    (requests and errors per round, so that none is hidden by the median)."""
    return {
        "requests_per_second": statistics.median(r["requests_per_second"] for r in runs),
        "p50_us": round(statistics.median(r["p50_us"] for r in runs), 1),
        "p99_us": round(statistics.median(r["p99_us"] for r in runs), 1),
        "requests": round(statistics.median(r["requests"] or 0 for r in runs)) or None,
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "server_log_lines": round(statistics.median(r["server_log_lines"] for r in runs)),
    }


def http_row(
    contender: str, runs: Sequence[dict[str, Any]], note: str, duration: int
) -> dict[str, Any]:
    """The results row of one HTTP contender from its rounds."""
    parsed = combine(runs)
    if len(runs) > 1:
        rates = ", ".join(f"{r['requests_per_second']:,.0f}" for r in runs)
        note += f"; median of {len(runs)} rounds ({rates} req/s)"
    errors = parsed["non_2xx"] + parsed["socket_errors"]
    if parsed["requests"] and parsed["server_log_lines"] >= parsed["requests"] // 2:
        note += "; logs a line per request (access log on)"
    if errors:
        note += f"; {parsed['non_2xx']} non-2xx and {parsed['socket_errors']} socket errors"
    return {
        "workload": "http_get_security",
        "contender": contender,
        "label": LABELS[contender],
        "available": True,
        "keys_per_second": round(parsed["requests_per_second"]),
        "p50_us": parsed["p50_us"],
        "p99_us": parsed["p99_us"],
        "calls": parsed["requests"],
        "wall_ms": duration * 1000,
        "note": note,
        "requests_per_second": parsed["requests_per_second"],
        "rounds_requests_per_second": [r["requests_per_second"] for r in runs],
        "errors": errors,
        "server_log_lines": parsed["server_log_lines"],
    }


def http_phase(
    ctx: Context,
    results: Results,
    *,
    duration: int,
    connections: int,
    threads: int,
    rounds: int = 1,
) -> dict[str, Any]:
    """Measure the HTTP contenders; returns what the results' metadata should say.

    ``rounds`` rounds, each running every contender once in turn (a fresh server each time),
    so that a machine whose speed drifts during the phase weighs on every contender alike;
    each contender's figures are the medians of its rounds.
    """
    print("HTTP (wrk)", flush=True)
    wrk = shutil.which("wrk")
    launch = find_launch()
    env = {"public_api_near": NEAR_ENV, "public_api_no_metrics": NO_METRICS_ENV}
    pairs = [(contender, env.get(contender, {})) for contender in HTTP_CONTENDERS]
    if wrk is None:
        print(f"  {WRK_MISSING}", flush=True)
        for contender, _ in pairs:
            results.add(unavailable("http_get_security", contender, WRK_MISSING))
        return {"tool": None, "note": WRK_MISSING}
    if launch is None:
        for contender, _ in pairs:
            results.add(unavailable("http_get_security", contender, "no servers package here"))
        return {"tool": f"wrk {wrk_version(wrk)}", "note": "no servers package"}
    wrk_argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    notes = {
        "constant": "the framework and server alone",
        "public_api": "as shipped: no trace exporter (so no spans), metrics on, near cache off",
        "public_api_near": "as shipped, SECURECACHE_LOCAL_CACHE_SIZE=10000",
        "public_api_no_metrics": (
            "context: no metrics exported (SECURECACHE_METRICS_PORT=0), so no request "
            "duration sample per request"
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {contender: [] for contender, _ in pairs}
    failures: dict[str, str] = {}
    for _ in range(rounds):
        for contender, extra in pairs:
            if contender in failures:
                continue
            try:
                runs[contender].append(measure_one(ctx, launch, contender, extra, wrk_argv))
            except (ServerFailed, ValueError, subprocess.TimeoutExpired, OSError) as exc:
                failures[contender] = str(exc)
    for contender, _ in pairs:
        if contender in failures:
            results.add(unavailable("http_get_security", contender, failures[contender]))
        else:
            results.add(http_row(contender, runs[contender], notes[contender], duration))
    return {
        "tool": f"wrk {wrk_version(wrk)}",
        "command": " ".join(["wrk", *wrk_argv[1:], f"http://{LOOPBACK}:PORT{PATH}"]),
        "launch": launch.describe(),
        "duration_seconds": duration,
        "rounds": rounds,
        "connections": connections,
        "threads": threads,
        "tracing": (
            "no exporter (OTEL_* unset): no spans; metrics on (Prometheus endpoint, request "
            "duration histogram); access log off (SECURECACHE_ACCESS_LOG unset) for both servers"
        ),
    }
