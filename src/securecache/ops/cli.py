"""The ``securecache`` command: migrate, load-securities, seed and dev.

Expected failures (bad input, unreachable server, missing setting) end with one line on
stderr and a non-zero status, never a traceback: the CLI runs in scripts and CI jobs whose
logs should say what to fix. Exit status: 0 success, 1 failure, 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import psycopg
import redis
from psycopg import sql

from securecache.errors import ConfigurationError, SecureCacheError
from securecache.ops import migrations
from securecache.ops.acl import setuser_rules
from securecache.ops.dev import (
    ServerInfo,
    default_base_dir,
    derive_url,
    read_or_create_secret,
    resolve_servers,
    role_passwords,
)
from securecache.ops.loader import load_securities
from securecache.ops.seed import seed
from securecache.settings import Settings, redact_url

DATABASE_URL_VAR: Final = "SECURECACHE_DATABASE_URL"
REDIS_URL_VAR: Final = "SECURECACHE_REDIS_URL"
# Names of variables, not secrets:
WRITER_PASSWORD_VAR: Final = "SECURECACHE_WRITER_PASSWORD"  # noqa: S105
READER_PASSWORD_VAR: Final = "SECURECACHE_READER_PASSWORD"  # noqa: S105
DEV_SEED_COUNT: Final = 1000
DEV_DATABASE: Final = "securecache"
"""The database ``dev`` creates on embedded servers (their superuser URL names ``postgres``)."""

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class UsageError(SecureCacheError):
    """The command line lacks something it needs (exit status 2)."""


def env_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``$NAME``, or the content of the file named by ``$NAME_FILE`` (Kubernetes Secrets)."""
    env = os.environ if environ is None else environ
    if value := env.get(name):
        return value
    if path := env.get(name + "_FILE"):
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigurationError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return None


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or env_secret(DATABASE_URL_VAR)
    if not url:
        raise UsageError(
            f"no database URL: pass --database-url or set {DATABASE_URL_VAR} "
            "(an administrator's URL for this command)"
        )
    return url


def _server_of(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, for summaries (never the password)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


# -- migrate --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _database_url(args)
    writer = env_secret(WRITER_PASSWORD_VAR)
    reader = env_secret(READER_PASSWORD_VAR)
    migrations.migrate(url, writer_password=writer, reader_password=reader)
    passwords = [role for role, pw in (("writer", writer), ("reader", reader)) if pw is not None]
    note = f"; passwords set for {', '.join(passwords)}" if passwords else ""
    print(
        f"migrated {_server_of(url)}: schema {migrations.SCHEMA}, roles {migrations.OWNER_ROLE}, "
        f"{migrations.WRITER_ROLE}, {migrations.READER_ROLE}{note}"
    )
    return EXIT_OK


# -- load-securities ----------------------------------------------------------------------


def cmd_load_securities(args: argparse.Namespace) -> int:
    url = _database_url(args)
    shown = False

    def progress(done: int, total: int) -> None:
        # A progress line is for people watching a terminal, not for logs.
        nonlocal shown
        if sys.stderr.isatty():
            print(f"\rloading securities: {done}/{total} rows", end="", file=sys.stderr, flush=True)
            shown = True

    try:
        summary = load_securities(url, args.file, batch_size=args.batch_size, progress=progress)
    finally:
        if shown:
            print(file=sys.stderr)
    print(f"{args.file}: {summary}")
    return EXIT_OK


# -- seed ---------------------------------------------------------------------------------


def cmd_seed(args: argparse.Namespace) -> int:
    url = _database_url(args)
    summary = seed(url, args.count, with_scores=not args.no_scores)
    print(f"seeded {_server_of(url)} with {args.count} demo securities: {summary}")
    return EXIT_OK


# -- dev ----------------------------------------------------------------------------------


def _redacted(url: str) -> str:
    return str(redact_url(url))


@attrs.frozen
class DevEnvironment:
    """Everything a developer (or the API servers) needs to talk to the dev servers."""

    servers: ServerInfo
    admin_url: str = attrs.field(repr=_redacted)
    writer_url: str = attrs.field(repr=_redacted)
    reader_url: str = attrs.field(repr=_redacted)
    redis_url: str = attrs.field(repr=_redacted)

    def settings(self, database_url: str | None = None) -> Settings:
        """Settings for a process of this environment (the writer's URL unless told)."""
        return Settings.from_env(
            database_url=database_url or self.writer_url, redis_url=self.redis_url
        )


PUBLIC_PORT: Final = 8080
INTERNAL_PORT: Final = 8081
API_STARTUP_SECONDS: Final = 60.0
SERVICE_USERS: Final = {"public": "securecache-public", "internal": "securecache-internal"}
"""The Redis ACL users of the two APIs on embedded servers (one per service)."""


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
    url = urlsplit(env.redis_url)
    netloc = f"{quote(user)}:{quote(password)}@{url.hostname}:{url.port}"
    return urlunsplit(url._replace(netloc=netloc))


def _wait_for_ports(host: str, ports: Sequence[int], serving: asyncio.Task[None]) -> None:
    """Until every port accepts connections (uvicorn binds after its lifespan started)."""
    deadline = time.monotonic() + API_STARTUP_SECONDS
    pending = list(ports)
    while pending:
        if serving.done():
            raise DevError("the APIs stopped while starting; see the log above")
        if time.monotonic() > deadline:
            raise DevError(f"the APIs did not open ports {pending} in {API_STARTUP_SECONDS:.0f} s")
        try:
            with socket.create_connection((host, pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.1)


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
    """Both APIs on a loop of their own thread, each with its own roles, until the block ends.

    The public API reads as ``securecache_reader``, the internal one writes as
    ``securecache_writer``, each with its own Redis user on embedded servers. Leaving the
    block drains both (requests in flight finish) before the servers below them stop.
    """
    try:
        from servers import internal_api, public_api
        from servers.run import configure_logging, serve_apps
    except ImportError as exc:
        raise DevError(
            "--serve needs the servers/ folder beside the library: run it from the repository "
            "root (make run, or python -m securecache dev --serve)"
        ) from exc
    state = base_dir or default_base_dir()
    state.mkdir(parents=True, exist_ok=True)
    token, _ = read_or_create_secret(state / "dev-api-token")
    public = Settings.from_env(database_url=env.reader_url, redis_url=env.redis_url)
    public = public.with_changes(
        redis_url=_service_redis_url(env, "public", public.key_prefix, state),
        listen_changes=True,
    )
    internal = public.with_changes(
        database_url=env.writer_url,
        redis_url=_service_redis_url(env, "internal", public.key_prefix, state),
        api_tokens=(token,),
    )
    apps = [
        (public_api.create_app(public), host, public_port),
        (internal_api.create_app(internal), host, internal_port),
    ]
    configure_logging()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="securecache-apis", daemon=True)
    thread.start()

    async def start() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(serve_apps(apps))

    async def drain(task: asyncio.Task[None]) -> None:
        task.cancel()  # serve_apps drains both servers: requests in flight finish first
        with contextlib.suppress(BaseException):  # uvicorn has logged any failure
            await task

    serving = asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        _wait_for_ports(host, [public_port, internal_port], serving)
        public_url = f"http://{host}:{public_port}"
        internal_url = f"http://{host}:{internal_port}"
        auth = f"-H 'Authorization: Bearer {token}'"
        body = '{"growth": 8.5, "value": 7.9, "quality": 9.1, "momentum": 6.8}'
        print(
            f"\npublic API   {public_url}   (reader role; docs at {public_url}/openapi.json)\n"
            f"  curl -s '{public_url}/securities?limit=3'\n"
            f"  curl -s {public_url}/securities/SEC000001/score\n"
            f"internal API {internal_url}   (writer role, bearer token)\n"
            f"  curl -s {auth} {internal_url}/scores/SEC000001\n"
            f"  curl -s -X PUT {auth} -H 'Content-Type: application/json' \\\n"
            f"       -d '{body}' {internal_url}/scores/SEC000001\n"
            f"dev token: {token}   (kept in {state / 'dev-api-token'})\n"
            "traces: set OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 (make jaeger) "
            "to export them",
            file=out,
            flush=True,
        )
        yield
    finally:
        asyncio.run_coroutine_threadsafe(drain(serving), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


class DevError(SecureCacheError):
    """``dev`` could not bring everything up; the message says what to do."""


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
    writer = env_secret(WRITER_PASSWORD_VAR)
    reader = env_secret(READER_PASSWORD_VAR)
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
    admin_url = servers.admin_url
    if servers.kind == "embedded":
        admin_url = derive_url(admin_url, dbname=DEV_DATABASE)
        with psycopg.connect(servers.admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT FROM pg_database WHERE datname = %s", (DEV_DATABASE,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEV_DATABASE)))
    writer, reader = _dev_role_passwords(servers, base_dir, out)
    migrations.migrate(admin_url, writer_password=writer, reader_password=reader)
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT EXISTS (SELECT FROM securecache.security)").fetchone()
    if row is not None and row[0]:
        print("securities present: no demo data added", file=out)
    elif seed_count:
        print(f"demo data: {seed(admin_url, seed_count)}", file=out)
    return DevEnvironment(
        servers=servers,
        admin_url=admin_url,
        writer_url=derive_url(admin_url, user=migrations.WRITER_ROLE, password=writer),
        reader_url=derive_url(admin_url, user=migrations.READER_ROLE, password=reader),
        redis_url=servers.redis_url,
    )


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
    return EXIT_OK


def cmd_dev(args: argparse.Namespace) -> int:
    return run_dev(
        serve=args.serve,
        public_port=args.public_port,
        internal_port=args.internal_port,
        exit_after_setup=args.exit_after_setup,
        seed_count=args.seed_count,
        database_url=args.database_url or env_secret(DATABASE_URL_VAR),
        redis_url=args.redis_url or env_secret(REDIS_URL_VAR),
        base_dir=args.state_dir,
    )


# -- plumbing -----------------------------------------------------------------------------


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def _port(text: str) -> int:
    port = _whole_number(text, 1)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {port}")
    return port


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securecache",
        description="Security and Score records: PostgreSQL as truth, Redis as shared cache.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def database_option(command: argparse.ArgumentParser, role: str) -> None:
        command.add_argument(
            "--database-url",
            metavar="URL",
            help=f"PostgreSQL URL of {role} (default: ${DATABASE_URL_VAR})",
        )

    migrate = commands.add_parser(
        "migrate",
        help="create or update the schema, roles and grants",
        description=(
            "Bring the schema, roles and grants up to date. Service-role passwords: "
            f"${WRITER_PASSWORD_VAR} and ${READER_PASSWORD_VAR} (or their _FILE variants)."
        ),
    )
    database_option(migrate, "an administrator")
    migrate.set_defaults(handler=cmd_migrate)

    load = commands.add_parser(
        "load-securities",
        help="upsert securities from a CSV file (id,name,symbol,exchange), all or nothing",
    )
    load.add_argument("file", type=Path, metavar="FILE")
    database_option(load, "an administrator")
    load.add_argument("--batch-size", type=_positive_int, default=1000, metavar="N")
    load.set_defaults(handler=cmd_load_securities)

    seed_cmd = commands.add_parser("seed", help="upsert demo securities SEC000001.. and scores")
    seed_cmd.add_argument("--count", type=_count, required=True, metavar="N")
    seed_cmd.add_argument("--no-scores", action="store_true", help="securities only")
    database_option(seed_cmd, "an administrator")
    seed_cmd.set_defaults(handler=cmd_seed)

    dev = commands.add_parser(
        "dev",
        help="PostgreSQL and Redis for development (embedded unless URLs are set), demo data",
        description=(
            "Start embedded PostgreSQL and Redis (or use the servers of --database-url and "
            "--redis-url when both are given), migrate, seed an empty database, print the "
            "URLs, then wait: Ctrl-C stops everything. On given servers the URLs are printed "
            "without passwords, and the service roles' passwords change only when "
            f"${WRITER_PASSWORD_VAR} / ${READER_PASSWORD_VAR} (or _FILE) are set."
        ),
    )
    database_option(dev, "an administrator")
    dev.add_argument("--redis-url", metavar="URL", help=f"Redis URL (default: ${REDIS_URL_VAR})")
    dev.add_argument("--serve", action="store_true", help="also run the public and internal APIs")
    dev.add_argument(
        "--public-port", type=_port, default=PUBLIC_PORT, help="public API port (default 8080)"
    )
    dev.add_argument(
        "--internal-port",
        type=_port,
        default=INTERNAL_PORT,
        help="internal API port (default 8081)",
    )
    dev.add_argument(
        "--exit-after-setup", action="store_true", help="stop once everything is ready (tests)"
    )
    dev.add_argument(
        "--seed-count",
        type=_count,
        default=DEV_SEED_COUNT,
        metavar="N",
        help=f"demo securities for an empty database (default {DEV_SEED_COUNT}; 0: none)",
    )
    dev.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help=f"where embedded servers keep their data (default {default_base_dir()})",
    )
    dev.set_defaults(handler=cmd_dev)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, psycopg.errors.UndefinedTable):
        text += " (has `securecache migrate` run on this database?)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``securecache`` console script and ``python -m securecache``."""
    args = build_parser().parse_args(argv)
    prefix = f"securecache {args.command}: error:"
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        print(f"securecache {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (SecureCacheError, psycopg.Error, redis.RedisError, OSError) as exc:
        print(f"{prefix} {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    return status
