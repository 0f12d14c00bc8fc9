"""What a result depends on: the machine, the interpreter, and every version in the path."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any, Final

PACKAGES: Final = (
    "securecache",
    "redis",
    "hiredis",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "orjson",
    "attrs",
    "cattrs",
    "uvicorn",
    "starlette",
    "uvloop",
    "httptools",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "aiocache",
    "cashews",
    "dogpile.cache",
    "cachetools",
    "matplotlib",
)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the figures (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe() -> dict[str, Any]:
    """The machine as the results file records it."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    from redis.utils import HIREDIS_AVAILABLE

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "redis_parser": "hiredis" if HIREDIS_AVAILABLE else "python",
    }
