"""The ``securecache`` command: migrate, load-securities, seed, redis-scripts and dev.

Expected failures (bad input, unreachable server, missing setting) end with one line on
stderr and a non-zero status, never a traceback: the CLI runs in scripts and CI jobs whose
logs should say what to fix. Exit status: 0 success, 1 failure, 2 usage, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import psycopg
import redis

from securecache.errors import SecureCacheError
from securecache.ops import migrations
from securecache.ops.defaults import (
    DATABASE_URL_VAR,
    DEV_SEED_COUNT,
    INTERNAL_PORT,
    PUBLIC_PORT,
    READER_PASSWORD_VAR,
    REDIS_URL_VAR,
    STATE_DIR_NAME,
    WRITER_PASSWORD_VAR,
)
from securecache.ops.loader import load_securities
from securecache.ops.redis_admin import load_scripts
from securecache.ops.seed import seed
from securecache.redaction import redact_text
from securecache.settings import Settings, read_secret

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class UsageError(SecureCacheError):
    """The command line lacks something it needs (exit status 2)."""


def _database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or read_secret(DATABASE_URL_VAR)
    if not url:
        raise UsageError(
            f"no database URL: pass --database-url or set {DATABASE_URL_VAR} "
            "(an administrator's URL for this command)"
        )
    # Checked as the library checks it: a malformed URL is refused without being echoed.
    Settings(database_url=url)
    return url


def _server_of(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, for summaries (never the password)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


# -- migrate --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    url = _database_url(args)
    writer = read_secret(WRITER_PASSWORD_VAR)
    reader = read_secret(READER_PASSWORD_VAR)
    migrations.migrate(
        url,
        writer_password=writer,
        reader_password=reader,
        connection_limit=args.connection_limit,
    )
    if args.revoke_public:
        migrations.revoke_public_access(url, args.revoke_public)
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


# -- redis-scripts --------------------------------------------------------------------------


def cmd_redis_scripts(args: argparse.Namespace) -> int:
    url = args.redis_url or read_secret(REDIS_URL_VAR)
    if not url:
        raise UsageError(
            f"no Redis URL: pass --redis-url or set {REDIS_URL_VAR} (an administrator's URL)"
        )
    Settings(redis_url=url)  # checked as the library checks it, never echoed
    shas = load_scripts(url, cluster=args.cluster)
    print(f"loaded {len(shas)} scripts: {', '.join(sha[:12] for sha in shas)}")
    return EXIT_OK


# -- dev ----------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    # Imported here: the dev stack brings the process supervisor (POSIX-only) with it.
    from securecache.ops.devstack import run_dev

    return run_dev(
        serve=args.serve,
        public_port=args.public_port,
        internal_port=args.internal_port,
        exit_after_setup=args.exit_after_setup,
        seed_count=args.seed_count,
        database_url=args.database_url or read_secret(DATABASE_URL_VAR),
        redis_url=args.redis_url or read_secret(REDIS_URL_VAR),
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
    migrate.add_argument(
        "--connection-limit",
        type=_positive_int,
        default=migrations.DEFAULT_CONNECTION_LIMIT,
        metavar="N",
        help=(
            "connections each service role may hold on the server "
            f"(default {migrations.DEFAULT_CONNECTION_LIMIT})"
        ),
    )
    migrate.add_argument(
        "--revoke-public",
        action="append",
        default=[],
        metavar="DB",
        help=(
            "also revoke CONNECT and TEMPORARY from PUBLIC on this other database of the "
            "server, e.g. postgres (repeatable; check no other application relies on it)"
        ),
    )
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

    scripts = commands.add_parser(
        "redis-scripts",
        help="load the library's Lua scripts into Redis (an administrator's step)",
        description=(
            "Service users may run securecache's scripts but not load them: run this as a Redis "
            "administrator once per server, and again after a restart or SCRIPT FLUSH."
        ),
    )
    scripts.add_argument(
        "--redis-url",
        metavar="URL",
        help=f"an administrator's Redis URL (default: ${REDIS_URL_VAR})",
    )
    scripts.add_argument("--cluster", action="store_true", help="the URL is a Redis Cluster node")
    scripts.set_defaults(handler=cmd_redis_scripts)

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
        help=f"where embedded servers keep their data (default ./{STATE_DIR_NAME})",
    )
    dev.set_defaults(handler=cmd_dev)
    return parser


def _one_line(exc: BaseException) -> str:
    text = redact_text(" ".join(str(exc).split())) or type(exc).__name__
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
