"""Every job of the project is a nox session; the Makefile only names them.

``nox -s tests`` runs the suite on the servers named by ``SECURECACHE_DATABASE_URL`` /
``SECURECACHE_REDIS_URL`` or, when those are unset, on embedded servers it starts itself.
``nox -s tests_system`` runs it again on the machine's own PostgreSQL and Redis when they
answer on their standard ports, so a CI machine covers two server versions.
"""

from __future__ import annotations

import os
import shutil
import socket

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
EXTRAS = ".[binary,embedded,servers]"
SERVER_VARS = ("SECURECACHE_DATABASE_URL", "SECURECACHE_REDIS_URL")
SYSTEM_DATABASE_URL = os.environ.get(
    "SECURECACHE_SYSTEM_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SYSTEM_REDIS_URL = os.environ.get("SECURECACHE_SYSTEM_REDIS_URL", "redis://127.0.0.1:6379/0")


def _install(session: nox.Session, *groups: str, extras: str = EXTRAS) -> None:
    requirements: list[str] = []
    for group in groups:
        requirements += nox.project.dependency_groups(PYPROJECT, group)
    session.install("-e", extras, *requirements)


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library, servers, tests and examples."""
    _install(session, "typecheck")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on the configured servers, or on embedded ones it starts."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def tests_system(session: nox.Session) -> None:
    """The suite again on the machine's own PostgreSQL and Redis, when they answer."""
    if not (_answers("127.0.0.1", 5432) and _answers("127.0.0.1", 6379)):
        session.skip("no system PostgreSQL/Redis on 127.0.0.1:5432/6379; the embedded run stands")
    _install(session, "test")
    env = {
        "SECURECACHE_DATABASE_URL": SYSTEM_DATABASE_URL,
        "SECURECACHE_REDIS_URL": SYSTEM_REDIS_URL,
    }
    session.run("pytest", *session.posargs, env=env)


CLUSTER_SUITE = (
    "tests/test_library.py",
    "tests/test_consistency.py",
    "tests/test_fail_open.py",
    "tests/test_resilience.py",
    "tests/test_stateful.py",
    "tests/test_audit.py",
    "tests/test_near_cache.py",
    "tests/test_attacks_redis.py",
    "tests/test_attacks_postgres.py",
    "tests/test_cache_backend.py",
    "tests/test_herd_across_processes.py",
)
"""The library's suite: what must hold on a Redis Cluster as on one Redis."""


@nox.session
def tests_cluster(session: nox.Session) -> None:
    """The library suite on a real local Redis Cluster (three masters it starts itself)."""
    _install(session, "test")
    env = {"SECURECACHE_TEST_REDIS_CLUSTER": "1"}
    session.run("pytest", *(session.posargs or CLUSTER_SUITE), env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """securecache beside bare redis-py, a naive cache-aside, other Python caches and a
    constant-JSON endpoint; writes bench/results.json, bench/results.md and
    docs/benchmarks.md with its chart. ``nox -s bench -- --help`` lists the options."""
    _install(session, "bench")
    if shutil.which("wrk") is None and "--no-http" not in session.posargs:
        session.warn(
            "wrk is not installed, so the HTTP figures will be missing (the rest still runs); "
            "on Debian or Ubuntu: apt-get update && apt-get install -y wrk"
        )
    session.run("python", "-m", "bench", *session.posargs)
