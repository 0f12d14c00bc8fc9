"""Embedded servers: they start, demand their passwords, stop, and never leave a process behind."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import psycopg
import pytest
import redis

from securecache.errors import ConfigurationError
from securecache.ops.dev import (
    EmbeddedServers,
    EmbeddedServersError,
    ServerInfo,
    ServersBusyError,
    leftover_processes,
    resolve_servers,
    role_passwords,
)
from securecache.ops.provision import derive_url
from securecache.settings import Settings


@pytest.fixture
def scratch(pytestconfig: pytest.Config) -> Iterator[Path]:
    """A base directory the servers' account can reach (pytest's tmp_path is root-only)."""
    base = pytestconfig.rootpath / ".securecache" / f"scratch-{secrets.token_hex(4)}"
    base.mkdir(parents=True)
    yield base
    leftovers = leftover_processes(base)
    for pid in leftovers:  # only if a test failed half-way
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)
    assert leftovers == []


@pytest.fixture(scope="module")
def initialised(pytestconfig: pytest.Config) -> Iterator[Path]:
    """A state directory with a cluster made once; copying it is ~8x faster than initdb."""
    base = pytestconfig.rootpath / ".securecache" / f"scratch-{secrets.token_hex(4)}"
    with EmbeddedServers("template", base_dir=base):
        pass
    yield base / "template"
    shutil.rmtree(base, ignore_errors=True)


def copy_state(initialised: Path, scratch: Path, name: str) -> None:
    """Give ``scratch/name`` a ready cluster (``cp -a`` keeps the servers' ownership)."""
    subprocess.run(["cp", "-a", str(initialised), str(scratch / name)], check=True)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition: object, timeout: float = 10.0) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def owner_script(base: Path, *, die_with_parent: bool) -> str:
    """A process that starts servers, reports them, then waits to be killed (or vanishes)."""
    return textwrap.dedent(f"""
        import json, os, sys, time
        from pathlib import Path
        from securecache.ops.dev import EmbeddedServers
        servers = EmbeddedServers(
            "owned", base_dir=Path({str(base)!r}), die_with_parent={die_with_parent}
        ).start()
        print(json.dumps([servers.postgres_pid, servers.redis_pid]), flush=True)
        if {not die_with_parent}:
            os._exit(0)  # no atexit, no cleanup: as if the owner crashed
        time.sleep(120)
    """)


def start_owner(base: Path, *, die_with_parent: bool) -> tuple[subprocess.Popen[str], list[int]]:
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script(base, die_with_parent=die_with_parent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    if not line:
        owner.wait()
        assert owner.stderr is not None
        pytest.fail(f"the owner process failed: {owner.stderr.read()}")
    return owner, json.loads(line)


def test_servers_answer_only_with_their_passwords_and_stop_without_leftovers(
    scratch: Path,
) -> None:
    """Both servers answer on loopback with generated passwords; stop leaves no process."""
    with EmbeddedServers("basic", base_dir=scratch) as servers:
        pids = [servers.postgres_pid, servers.redis_pid]
        with psycopg.connect(servers.database_url) as conn:
            row = conn.execute("SELECT current_setting('server_version'), inet_server_addr()")
            version, address = row.fetchone() or (None, None)
        assert version is not None
        assert version.split()[0] == servers.postgres_version
        assert str(address) == "127.0.0.1"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(derive_url(servers.database_url, password="wrong")).close()
        client = redis.Redis.from_url(servers.redis_url)
        assert client.ping() is True
        assert client.info("server")["redis_version"] == servers.redis_version
        client.close()
        port = int(urlsplit(servers.redis_url).port or 0)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as anonymous:
            anonymous.sendall(b"PING\r\n")
            assert anonymous.recv(100).startswith(b"-NOAUTH")
        state = servers.state_dir
        assert set(pids) <= set(leftover_processes(state))
        for secret in ("postgres-password", "redis-password"):
            assert (state / secret).stat().st_mode & 0o777 == 0o600
        assert (state / "postgres").stat().st_mode & 0o777 == 0o700
    assert leftover_processes(state) == []
    assert not any(running(pid) for pid in pids if pid is not None)


def test_servers_never_run_as_root(initialised: Path, scratch: Path) -> None:
    """As root, the servers run as an unprivileged account; otherwise as ourselves."""
    copy_state(initialised, scratch, "account")
    with EmbeddedServers("account", base_dir=scratch) as servers:
        for pid in (servers.postgres_pid, servers.redis_pid):
            status = Path(f"/proc/{pid}/status").read_text()
            uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
            if os.geteuid() == 0:
                assert uid != 0
            else:
                assert uid == os.geteuid()


def test_a_killed_owner_takes_its_servers_along(initialised: Path, scratch: Path) -> None:
    """SIGKILL of the owning process still stops both servers (PR_SET_PDEATHSIG)."""
    copy_state(initialised, scratch, "owned")
    owner, pids = start_owner(scratch, die_with_parent=True)
    assert all(running(pid) for pid in pids)
    owner.kill()
    owner.communicate()
    assert wait_until(lambda: not any(running(pid) for pid in pids)), "servers outlived owner"
    assert wait_until(lambda: leftover_processes(scratch / "owned") == [])
    with EmbeddedServers("owned", base_dir=scratch) as servers:  # and the data dir is reusable
        assert servers.postgres_version


def test_leftovers_of_a_crashed_run_are_cleared_before_the_next_start(
    initialised: Path, scratch: Path
) -> None:
    """Servers orphaned by a crashed owner are killed, and their stale pid file ignored."""
    copy_state(initialised, scratch, "owned")
    owner, old_pids = start_owner(scratch, die_with_parent=False)
    owner.communicate()
    state = scratch / "owned"
    assert all(running(pid) for pid in old_pids), "the orphans should still be running"
    assert (state / "postgres" / "postmaster.pid").exists()
    with EmbeddedServers("owned", base_dir=scratch) as servers:
        assert not any(running(pid) for pid in old_pids)
        with psycopg.connect(servers.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        client = redis.Redis.from_url(servers.redis_url)
        assert client.ping() is True
        client.close()
    assert leftover_processes(state) == []


def test_a_stale_pid_file_naming_a_live_process_does_not_block_start(
    initialised: Path, scratch: Path
) -> None:
    """A postmaster.pid left behind, naming a live process that is not ours, is removed."""
    copy_state(initialised, scratch, "stale")
    with EmbeddedServers("stale", base_dir=scratch) as servers:
        data = servers.state_dir / "postgres"
    pid_file = data / "postmaster.pid"
    assert not pid_file.exists()
    # A live process of the servers' own account, and not the postmaster's parent: exactly
    # what PostgreSQL alone takes for a running postmaster ("lock file already exists").
    owner = data.stat()
    sleeper = subprocess.Popen(["sleep", "60"], user=owner.st_uid, group=owner.st_gid)
    try:
        pid_file.write_text(f"{sleeper.pid}\n{data}\n")
        with EmbeddedServers("stale", base_dir=scratch) as servers:
            assert servers.postgres_version  # only set once the server answered a query
        assert sleeper.poll() is None  # a stranger's process is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_state_directory_has_one_owner_at_a_time(initialised: Path, scratch: Path) -> None:
    """A second EmbeddedServers on a running state directory is refused and harms nothing."""
    copy_state(initialised, scratch, "busy")
    with EmbeddedServers("busy", base_dir=scratch) as servers:
        with pytest.raises(ServersBusyError, match=str(os.getpid())):
            EmbeddedServers("busy", base_dir=scratch).start()
        with psycopg.connect(servers.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_server_that_cannot_start_reports_its_log_and_leaves_nothing(
    initialised: Path, scratch: Path
) -> None:
    """A failed start raises with the server's own log lines and stops whatever started."""
    copy_state(initialised, scratch, "broken")
    broken = EmbeddedServers(
        "broken", base_dir=scratch, postgres_settings={"shared_buffers": "lots"}
    )
    with pytest.raises(EmbeddedServersError, match="shared_buffers"):
        broken.start()
    assert leftover_processes(scratch / "broken") == []
    with EmbeddedServers("broken", base_dir=scratch):  # the lock was released too
        pass


def test_resolve_servers_uses_both_urls_or_neither(servers: ServerInfo) -> None:
    """Both URLs set: those servers, nothing started; only one set: a clear refusal."""
    settings = Settings(database_url=servers.admin_url, redis_url=servers.redis_url)
    with resolve_servers(settings) as resolved:
        assert resolved.kind == "external"
        assert resolved.postgres_version == servers.postgres_version
        assert resolved.redis_version == servers.redis_version
    with (
        pytest.raises(ConfigurationError, match="SECURECACHE_REDIS_URL"),
        resolve_servers(Settings(database_url=servers.admin_url)),
    ):
        pass


def test_derive_url_changes_only_what_it_is_told() -> None:
    """Role URLs keep the server and options of the admin DSN, URL or key=value alike."""
    url = derive_url(
        "host=db.example port=6432 dbname=app user=admin password=x sslmode=require",
        user="securecache_writer",
        password="p@ss/word",
    )
    assert url == (
        "postgresql://securecache_writer:p%40ss%2Fword@db.example:6432/app?sslmode=require"
    )
    params = psycopg.conninfo.conninfo_to_dict(url)
    assert params["password"] == "p@ss/word"
    assert derive_url("postgresql://u@[::1]:5/a", dbname="b") == "postgresql://u@[::1]:5/b"


def test_role_passwords_are_made_once_per_server(tmp_path: Path) -> None:
    """Everyone in a tree gets the same service-role passwords for one server, kept 0600."""
    info = ServerInfo(
        kind="external",
        admin_url="postgresql://postgres@db.example:5433/postgres",
        redis_url="redis://localhost:6379/0",
        postgres_version="18",
        redis_version="7",
    )
    first = role_passwords(info, tmp_path)
    assert first == role_passwords(info, tmp_path)
    assert first.writer != first.reader
    other = role_passwords(
        attrs.evolve(info, admin_url="postgresql://postgres@db.example/x"), tmp_path
    )
    assert other != first
    stored = tmp_path / "roles" / "db.example-5433.json"
    assert stored.stat().st_mode & 0o777 == 0o600
