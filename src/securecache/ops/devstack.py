"""``securecache dev``: servers, schema and demo data, and with ``--serve`` both APIs.

The APIs run as two child processes of the one launcher (``python -m servers public`` and
``python -m servers internal``), each with the environment a deployment would give it: its
own database role and, on embedded Redis, its own ACL user. ``make run`` is this command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import psycopg
import redis

from securecache.errors import SecureCacheError
from securecache.ops import migrations
from securecache.ops.acl import setuser_rules
from securecache.ops.defaults import (
    API_TOKENS_VAR,
    DEV_DATABASE,
    DEV_SEED_COUNT,
    INTERNAL_PORT,
    PUBLIC_PORT,
    READER_PASSWORD_VAR,
    WRITER_PASSWORD_VAR,
)
from securecache.ops.dev import (
    ServerInfo,
    death_signal_setter,
    default_base_dir,
    free_port,
    read_or_create_secret,
    resolve_servers,
    role_passwords,
)
from securecache.ops.provision import provision
from securecache.ops.redis_admin import load_scripts
from securecache.ops.seed import seed
from securecache.redaction import redact_url
from securecache.settings import ENV_PREFIX, Settings, read_secret

API_STARTUP_SECONDS: Final = 60.0
API_STOP_SECONDS: Final = 35.0
"""Longer than the launcher's drain (25 s): requests in flight finish before we give up."""
SERVICE_USERS: Final = {"public": "securecache-public", "internal": "securecache-internal"}
"""The Redis ACL users of the two APIs on embedded servers (one per service)."""


def _redacted(url: str) -> str:
    return str(redact_url(url))


class DevError(SecureCacheError):
    """``dev`` could not bring everything up; the message says what to do."""


@attrs.frozen
class DevEnvironment:
    """Everything a developer (or the API servers) needs to talk to the dev servers."""

    servers: ServerInfo
    admin_url: str = attrs.field(repr=_redacted)
    writer_url: str = attrs.field(repr=_redacted)
    reader_url: str = attrs.field(repr=_redacted)
    redis_url: str = attrs.field(repr=_redacted)


def _dev_role_passwords(
    servers: ServerInfo, base_dir: Path | None, out: TextIO
) -> tuple[str | None, str | None]:
    """The passwords ``dev`` sets on the writer and reader roles (None: leave it alone).

    Embedded servers are ours: their roles get the passwords kept in the state directory.
    Roles belong to a whole cluster, though, and those of someone else's server may be what
    deployed services log in with; there only the passwords given (``SECURECACHE_WRITER_
    PASSWORD``, ``..._READER_PASSWORD`` or their ``_FILE``) are set, as ``migrate`` does.
    """
    if servers.kind == "embedded":
        kept = role_passwords(servers, base_dir)
        return kept.writer, kept.reader
    writer = read_secret(WRITER_PASSWORD_VAR)
    reader = read_secret(READER_PASSWORD_VAR)
    left = [
        (role, var)
        for role, var, given in (
            (migrations.WRITER_ROLE, WRITER_PASSWORD_VAR, writer),
            (migrations.READER_ROLE, READER_PASSWORD_VAR, reader),
        )
        if given is None
    ]
    if left:
        roles, variables = ", ".join(r for r, _ in left), ", ".join(v for _, v in left)
        print(
            f"role passwords left as they are on this server: {roles} "
            f"(set {variables} to set them; the URLs below carry none)",
            file=out,
        )
    return writer, reader


def prepare_dev(
    servers: ServerInfo, *, seed_count: int, base_dir: Path | None = None, out: TextIO | None = None
) -> DevEnvironment:
    """Migrate and seed an empty database.

    On embedded servers the data goes in a database of its own, ``securecache``, and the
    service roles get the passwords kept for that server; on external ones, in the database
    the URL names, and the roles' passwords change only when given (see
    :func:`_dev_role_passwords`).
    """
    out = out or sys.stdout
    writer, reader = _dev_role_passwords(servers, base_dir, out)
    database = provision(
        servers.admin_url,
        DEV_DATABASE if servers.kind == "embedded" else None,
        writer_password=writer,
        reader_password=reader,
    )
    with psycopg.connect(database.admin_url) as conn:
        row = conn.execute("SELECT EXISTS (SELECT FROM securecache.security)").fetchone()
    if row is not None and row[0]:
        print("securities present: no demo data added", file=out)
    elif seed_count:
        print(f"demo data: {seed(database.admin_url, seed_count)}", file=out)
    return DevEnvironment(
        servers=servers,
        admin_url=database.admin_url,
        writer_url=database.writer_url,
        reader_url=database.reader_url,
        redis_url=servers.redis_url,
    )


# -- the APIs, as child processes -----------------------------------------------------------


def _service_redis_url(env: DevEnvironment, service: str, key_prefix: str, state: Path) -> str:
    """On embedded Redis, a URL for the service's own ACL user, confined to the key prefix.

    On a Redis of someone else's (URLs given), nothing is changed: its URL is used as given.
    """
    if env.servers.kind != "embedded":
        return env.redis_url
    user = SERVICE_USERS[service]
    password, _ = read_or_create_secret(state / f"redis-{service}-password")
    with redis.Redis.from_url(env.redis_url) as admin:
        admin.execute_command("ACL", "SETUSER", user, *setuser_rules(password, key_prefix))
    load_scripts(env.redis_url)  # the administrator's step: service users may not
    url = urlsplit(env.redis_url)
    netloc = f"{quote(user)}:{quote(password)}@{url.hostname}:{url.port}"
    return urlunsplit(url._replace(netloc=netloc))


def _wait_for_ports(
    host: str, ports: Sequence[int], children: Sequence[subprocess.Popen[bytes]]
) -> None:
    """Until every port accepts connections (uvicorn binds after its lifespan started)."""
    deadline = time.monotonic() + API_STARTUP_SECONDS
    pending = list(ports)
    while pending:
        if any(child.poll() is not None for child in children):
            raise DevError("an API stopped while starting; see the log above")
        if time.monotonic() > deadline:
            raise DevError(f"the APIs did not open ports {pending} in {API_STARTUP_SECONDS:.0f} s")
        try:
            with socket.create_connection((host, pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.1)


def _launch(service: str, host: str, port: int, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """``python -m servers <service>``, dying with us, its log on our terminal."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and launcher, no shell
        [sys.executable, "-m", "servers", service, "--host", host, "--port", str(port)],
        stdin=subprocess.DEVNULL,
        env=dict(env),
        # Own session: Ctrl-C reaches us alone, and we drain the APIs before the servers stop.
        start_new_session=True,
        # Deliberate: started from the main thread, before any others.
        preexec_fn=death_signal_setter(signal.SIGTERM),  # noqa: PLW1509
    )


def _stop(children: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (the launcher drains requests in flight), then wait; kill only if it hangs."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + API_STOP_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextlib.contextmanager
def serve_apis(
    env: DevEnvironment,
    out: TextIO,
    *,
    host: str = "127.0.0.1",
    public_port: int = PUBLIC_PORT,
    internal_port: int = INTERNAL_PORT,
    base_dir: Path | None = None,
) -> Iterator[None]:
    """Both APIs as child processes, each with its own roles, until the block ends.

    The public API reads as ``securecache_reader``, the internal one writes as
    ``securecache_writer``, each with its own Redis user on embedded servers. Tokens for the
    internal API come from ``SECURECACHE_API_TOKENS`` (or ``_FILE``) when set; otherwise a
    dev token is generated, kept in the state directory and printed. Leaving the block drains
    both APIs before the servers below them stop.
    """
    state = base_dir or default_base_dir()
    state.mkdir(parents=True, exist_ok=True)
    key_prefix = Settings.from_env().key_prefix
    given_tokens = read_secret(API_TOKENS_VAR)
    if given_tokens is None:
        token, _ = read_or_create_secret(state / "dev-api-token")
        tokens = f"dev:write:{token}"
    else:
        token, tokens = None, given_tokens
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    base |= {f"{ENV_PREFIX}KEY_PREFIX": key_prefix, f"{ENV_PREFIX}LISTEN_CHANGES": "true"}
    public_env = base | {
        f"{ENV_PREFIX}DATABASE_URL": env.reader_url,
        f"{ENV_PREFIX}REDIS_URL": _service_redis_url(env, "public", key_prefix, state),
        f"{ENV_PREFIX}METRICS_PORT": str(free_port()),
    }
    internal_env = base | {
        f"{ENV_PREFIX}DATABASE_URL": env.writer_url,
        f"{ENV_PREFIX}REDIS_URL": _service_redis_url(env, "internal", key_prefix, state),
        f"{ENV_PREFIX}METRICS_PORT": str(free_port()),
        API_TOKENS_VAR: tokens,
    }
    children = [
        _launch("public", host, public_port, public_env),
        _launch("internal", host, internal_port, internal_env),
    ]
    try:
        _wait_for_ports(host, [public_port, internal_port], children)
        public_url = f"http://{host}:{public_port}"
        internal_url = f"http://{host}:{internal_port}"
        # Shown only on embedded servers: on servers of the user's own, the terminal or CI
        # log that shows it may be read by others than whoever may write scores.
        shown = token if token is not None and env.servers.kind == "embedded" else None
        auth = f"-H 'Authorization: Bearer {shown or '<token>'}'"
        body = '{"growth": 8.5, "value": 7.9, "quality": 9.1, "momentum": 6.8}'
        if shown:
            kept = f"dev token: {shown}   (kept in {state / 'dev-api-token'})"
        elif token:
            kept = f"dev token: kept in {state / 'dev-api-token'} (not shown: external servers)"
        else:
            kept = f"tokens: from {API_TOKENS_VAR} (not shown)"
        print(
            f"\npublic API   {public_url}   (reader role; docs at {public_url}/openapi.json)\n"
            f"  curl -s '{public_url}/securities?limit=3'\n"
            f"  curl -s {public_url}/securities/SEC000001/score\n"
            f"internal API {internal_url}   (writer role, bearer token)\n"
            f"  curl -s {auth} {internal_url}/scores/SEC000001\n"
            f"  curl -s -X PUT {auth} -H 'Content-Type: application/json' \\\n"
            f"       -d '{body}' {internal_url}/scores/SEC000001\n"
            f"metrics      http://{host}:{public_env[f'{ENV_PREFIX}METRICS_PORT']}/metrics "
            f"and http://{host}:{internal_env[f'{ENV_PREFIX}METRICS_PORT']}/metrics\n"
            f"{kept}\n"
            "traces: set OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 (make jaeger) "
            "to export them",
            file=out,
            flush=True,
        )
        yield
    finally:
        _stop(children)


# -- the command --------------------------------------------------------------------------


class _Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop the way Ctrl-C does."""


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM unwind the ``with`` blocks, which stop the servers in order.

    SIGINT is set explicitly because a shell starts background jobs with it ignored.
    """

    def terminate(_signum: int, _frame: FrameType | None) -> None:
        raise _Terminated

    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous_term = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def run_dev(
    *,
    serve: bool = False,
    public_port: int = PUBLIC_PORT,
    internal_port: int = INTERNAL_PORT,
    exit_after_setup: bool = False,
    seed_count: int = DEV_SEED_COUNT,
    database_url: str | None = None,
    redis_url: str | None = None,
    base_dir: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """Servers up, schema migrated, demo data in; then wait for Ctrl-C or SIGTERM."""
    out = out or sys.stdout
    settings = Settings(database_url=database_url, redis_url=redis_url)
    with (
        _stop_signals(),
        contextlib.ExitStack() as stack,
    ):
        servers = stack.enter_context(resolve_servers(settings, base_dir=base_dir))
        env = prepare_dev(servers, seed_count=seed_count, base_dir=base_dir, out=out)
        # In full for embedded servers (local, generated, and what a developer connects
        # with); without passwords for servers of someone else's, whose secrets a terminal
        # or a CI log must not show.
        shown = (lambda url: url) if servers.kind == "embedded" else _redacted
        print(servers.describe(), file=out)
        print(f"  admin  (migrations, loads): {shown(env.admin_url)}", file=out)
        print(f"  writer (internal API):      {shown(env.writer_url)}", file=out)
        print(f"  reader (public API):        {shown(env.reader_url)}", file=out)
        print(f"  redis:                      {shown(env.redis_url)}", file=out)
        if serve:
            stack.enter_context(
                serve_apis(
                    env,
                    out,
                    public_port=public_port,
                    internal_port=internal_port,
                    base_dir=base_dir,
                )
            )
        if exit_after_setup:
            print("ready; stopping (--exit-after-setup)", file=out, flush=True)
        else:
            print("Ctrl-C stops everything.", file=out, flush=True)
            try:
                while True:
                    servers.check()
                    time.sleep(0.5)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM
                print("\nstopping...", file=out, flush=True)
    print("stopped.", file=out, flush=True)
    return 0
