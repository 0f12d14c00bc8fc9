"""``python -m securecache``: exit codes, summaries on stdout, one-line reasons on stderr."""

from __future__ import annotations

import io
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from fix_servers import Database, EmptyDatabase, state_base
from securecache.ops import migrations
from securecache.ops.cli import main
from securecache.ops.dev import (
    RolePasswords,
    ServerInfo,
    free_port,
    leftover_processes,
    role_passwords,
)
from securecache.ops.provision import MIGRATE_LOCK, derive_url
from securecache.ops.seed import EXCHANGES
from securecache.redaction import redact_url

HEADER = "id,name,symbol,exchange\n"


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without any SECURECACHE_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECACHE_")}
    return {**env, **extra}


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "securecache", *map(str, args)],
        capture_output=True,
        text=True,
        env=cli_env() if env is None else env,
        timeout=120,
        check=False,
    )


def call(capsys: pytest.CaptureFixture[str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``main(args)`` in this process (no interpreter start-up), as a CompletedProcess."""
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_migrate_seed_and_load_on_a_fresh_database(
    empty_database: EmptyDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin commands succeed in order, print summaries, and write what they say."""
    url = empty_database.admin_url
    migrated = run("migrate", "--database-url", url)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stderr == ""
    assert "migrated 127.0.0.1:" in migrated.stdout or "migrated " in migrated.stdout
    assert empty_database.name in migrated.stdout

    seeded = run("seed", "--count", "25", "--database-url", url)
    assert seeded.returncode == 0, seeded.stderr
    assert "securities: 25 inserted, 0 updated, 0 unchanged" in seeded.stdout
    assert "scores: 25 inserted" in seeded.stdout
    assert main(["seed", "--count", "25", "--database-url", url]) == 0  # in-process: faster
    again = capsys.readouterr().out
    assert "securities: 0 inserted, 0 updated, 25 unchanged" in again
    assert "scores: 0 inserted, 0 updated, 25 unchanged" in again

    with psycopg.connect(url) as conn:
        securities = conn.execute(
            "SELECT id, exchange, version FROM securecache.security ORDER BY id"
        ).fetchall()
        scores = conn.execute(
            "SELECT growth, value, quality, momentum FROM securecache.score"
        ).fetchall()
    assert [s[0] for s in securities] == [f"SEC{n:06d}" for n in range(1, 26)]
    assert {s[1] for s in securities} <= set(EXCHANGES)
    assert {s[2] for s in securities} == {1}
    assert len(scores) == 25
    assert all(0 <= v <= 10 and round(v, 2) == v for row in scores for v in row)

    csv = tmp_path / "more.csv"
    csv.write_text(HEADER + "NEW1,New One,NW1,XNAS\nSEC000001,Renamed,RNM,XNYS\n")
    loaded = run("load-securities", csv, "--database-url", url)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == f"{csv}: 2 rows read: 1 inserted, 1 updated, 0 unchanged"
    assert loaded.stderr == ""  # no progress line: stderr is not a terminal


def test_a_bad_file_fails_with_one_line_naming_its_bad_lines(
    database: Database, tmp_path: Path
) -> None:
    """Exit 1 and a single stderr line that names each bad line; nothing is written."""
    csv = tmp_path / "bad.csv"
    tag = "B" + secrets.token_hex(3)
    csv.write_text(HEADER + f"{tag}-1,Fine,F,XNYS\n!{tag},Bad,B,XNYS\n{tag}-3,,E,XNYS\n")
    result = run("load-securities", csv, "--database-url", database.admin_url)
    line = assert_one_line_error(result, 1)
    assert line.startswith("securecache load-securities: error:")
    assert "line 3:" in line
    assert "line 4:" in line
    with psycopg.connect(database.admin_url) as conn:
        count = conn.execute(
            "SELECT count(*) FROM securecache.security WHERE id LIKE %s", (f"{tag}%",)
        ).fetchone()
    assert count == (0,)


def test_a_missing_database_url_is_a_usage_error() -> None:
    """Without --database-url or SECURECACHE_DATABASE_URL: exit 2 and a one-line reason."""
    line = assert_one_line_error(run("migrate"), 2)
    assert line.startswith("securecache migrate: error: no database URL")
    assert "SECURECACHE_DATABASE_URL" in line


@pytest.mark.parametrize(
    "args",
    [["seed", "--count", "1"], ["load-securities", "any.csv"], ["migrate"]],
    ids=["seed", "load-securities", "migrate"],
)
def test_every_database_command_needs_the_url(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each admin command refuses to guess a database (checked in-process, all of them)."""
    monkeypatch.delenv("SECURECACHE_DATABASE_URL", raising=False)
    monkeypatch.delenv("SECURECACHE_DATABASE_URL_FILE", raising=False)
    line = assert_one_line_error(call(capsys, *args), 2)
    assert "SECURECACHE_DATABASE_URL" in line


def test_an_unreachable_database_is_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A server that does not answer gives exit 1, a one-line reason, and no secret."""
    url = "postgresql://postgres:s3cr3t-pw@127.0.0.1:1/x"
    result = call(capsys, "migrate", "--database-url", url)
    line = assert_one_line_error(result, 1)
    assert "127.0.0.1" in line
    assert "s3cr3t-pw" not in line


def test_loading_before_migrating_says_what_to_do(
    empty_database: EmptyDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On an unmigrated database the one-line error points at `securecache migrate`."""
    csv = tmp_path / "one.csv"
    csv.write_text(HEADER + "A1,Alpha,ALP,XNYS\n")
    line = assert_one_line_error(
        call(capsys, "load-securities", csv, "--database-url", empty_database.admin_url), 1
    )
    assert "securecache migrate" in line


def test_the_database_url_comes_from_the_environment_or_a_file(
    database: Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SECURECACHE_DATABASE_URL and SECURECACHE_DATABASE_URL_FILE both stand in for the flag."""
    csv = tmp_path / "empty.csv"
    csv.write_text(HEADER)
    monkeypatch.delenv("SECURECACHE_DATABASE_URL_FILE", raising=False)
    monkeypatch.setenv("SECURECACHE_DATABASE_URL", database.admin_url)
    by_value = call(capsys, "load-securities", csv)
    assert by_value.returncode == 0, by_value.stderr
    secret = tmp_path / "database-url"
    secret.write_text(database.admin_url + "\n")
    monkeypatch.delenv("SECURECACHE_DATABASE_URL")
    monkeypatch.setenv("SECURECACHE_DATABASE_URL_FILE", str(secret))
    by_file = call(capsys, "load-securities", csv)
    assert by_file.returncode == 0, by_file.stderr
    assert "0 rows read" in by_file.stdout


@pytest.fixture
def passwords(servers: ServerInfo, pytestconfig: pytest.Config) -> RolePasswords:
    """The session's service-role passwords (roles are shared: others must not be locked out)."""
    return role_passwords(servers, state_base(pytestconfig))


def test_migrate_sets_service_passwords_from_the_environment(
    database: Database,
    passwords: RolePasswords,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SECURECACHE_WRITER_PASSWORD(_FILE) and ..._READER_PASSWORD reach the roles."""
    writer_file = tmp_path / "writer-password"
    writer_file.write_text(passwords.writer)

    def verifiers() -> list[tuple[Any, ...]]:
        with psycopg.connect(database.admin_url) as conn:
            return conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid "
                "WHERE rolname IN ('securecache_writer', 'securecache_reader') ORDER BY 1"
            ).fetchall()

    before = verifiers()
    monkeypatch.delenv("SECURECACHE_WRITER_PASSWORD", raising=False)
    monkeypatch.delenv("SECURECACHE_READER_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("SECURECACHE_WRITER_PASSWORD_FILE", str(writer_file))
    monkeypatch.setenv("SECURECACHE_READER_PASSWORD", passwords.reader)
    result = call(capsys, "migrate", "--database-url", database.admin_url)
    assert result.returncode == 0, result.stderr
    assert "passwords set for writer, reader" in result.stdout
    after = verifiers()
    # A fresh salt each time: the verifiers change even though the passwords are the same.
    assert [a[1] != b[1] for a, b in zip(after, before, strict=True)] == [True, True]
    for url in (database.writer_url, database.reader_url):
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) >= 0 FROM securecache.score").fetchone()


def url_after(label: str, text: str) -> str:
    match = re.search(rf"^\s*{label}\b.*?:\s+(\S+)$", text, re.MULTILINE)
    assert match is not None, text
    return match.group(1)


def server_secrets(servers: ServerInfo, passwords: RolePasswords) -> list[str]:
    """Every password the servers' and roles' URLs hold (none may be printed for them)."""
    found = [
        conninfo_to_dict(servers.admin_url).get("password"),
        urlsplit(servers.redis_url).password,
        passwords.writer,
        passwords.reader,
    ]
    return [str(secret) for secret in found if secret]


def role_verifiers(servers: ServerInfo) -> list[tuple[Any, ...]]:
    """The service roles' password verifiers, as the administrator reads them."""
    with psycopg.connect(servers.admin_url) as conn:
        return conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid "
            "WHERE rolname IN ('securecache_writer', 'securecache_reader') ORDER BY 1"
        ).fetchall()


@pytest.fixture
def roles_to_ourselves(servers: ServerInfo) -> Iterator[None]:
    """No session migrates its database (and so sets the roles' passwords) during the test:
    they take turns through the advisory lock fix_servers holds while migrating."""
    with psycopg.connect(servers.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        yield


@pytest.mark.usefixtures("roles_to_ourselves")
def test_dev_on_given_servers_migrates_seeds_once_and_exits(
    empty_database: EmptyDatabase,
    servers: ServerInfo,
    pytestconfig: pytest.Config,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dev --exit-after-setup --serve` with both URLs and the roles' passwords set: no
    server started, data in, the APIs up on the given ports and down again, exit 0, the URLs
    printed without their passwords, the dev token kept but not shown; a second run seeds
    nothing and serves the tokens SECURECACHE_API_TOKENS gives, without showing them."""
    passwords = role_passwords(servers, state_base(pytestconfig))
    env = cli_env(
        SECURECACHE_DATABASE_URL=empty_database.admin_url,
        SECURECACHE_REDIS_URL=servers.redis_url,
        SECURECACHE_WRITER_PASSWORD=passwords.writer,
        SECURECACHE_READER_PASSWORD=passwords.reader,
    )
    args = ["dev", "--exit-after-setup", "--serve", "--seed-count", "30"]
    args += ["--state-dir", str(state_base(pytestconfig))]
    args += ["--public-port", str(free_port()), "--internal-port", str(free_port())]
    first = run(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "(external)" in first.stdout
    assert "demo data: securities: 30 inserted" in first.stdout
    assert re.search(r"^public API   http://127\.0\.0\.1:\d+", first.stdout, re.MULTILINE)
    assert re.search(r"^internal API http://127\.0\.0\.1:\d+", first.stdout, re.MULTILINE)
    assert first.stdout.rstrip().endswith("stopped.")
    assert "left as they are" not in first.stdout
    assert url_after("admin", first.stdout) == redact_url(empty_database.admin_url)
    assert url_after("redis", first.stdout) == redact_url(servers.redis_url)
    reader_url = derive_url(
        empty_database.admin_url, user=migrations.READER_ROLE, password=passwords.reader
    )
    assert url_after("reader", first.stdout) == redact_url(reader_url)
    for secret in server_secrets(servers, passwords):
        assert secret not in first.stdout
    # External servers: the generated dev token is kept, never printed.
    token = (state_base(pytestconfig) / "dev-api-token").read_text().strip()
    assert token not in first.stdout
    assert "(not shown: external servers)" in first.stdout
    with psycopg.connect(reader_url) as conn:
        assert conn.execute("SELECT count(*) FROM securecache.security").fetchone() == (30,)

    for name, value in env.items():  # the second run in-process, to save a start-up
        if name.startswith("SECURECACHE_"):
            monkeypatch.setenv(name, value)
    # Tokens given in the environment are the internal API's (make run honours them).
    given = "ops:write:" + secrets.token_urlsafe(24)
    monkeypatch.setenv("SECURECACHE_API_TOKENS", given)
    second = call(capsys, *args)
    assert second.returncode == 0, second.stderr
    assert "securities present: no demo data added" in second.stdout
    assert "tokens: from SECURECACHE_API_TOKENS (not shown)" in second.stdout
    assert given.rpartition(":")[2] not in second.stdout


@pytest.mark.usefixtures("roles_to_ourselves")
def test_dev_on_given_servers_leaves_the_role_passwords_alone(
    empty_database: EmptyDatabase,
    servers: ServerInfo,
    pytestconfig: pytest.Config,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without SECURECACHE_WRITER_PASSWORD / _READER_PASSWORD, `dev` on servers it was given
    migrates but keeps the roles' passwords (deployed services may log in with them), says
    so, and prints role URLs without a password and no secret at all."""
    for role in ("WRITER", "READER"):
        monkeypatch.delenv(f"SECURECACHE_{role}_PASSWORD", raising=False)
        monkeypatch.delenv(f"SECURECACHE_{role}_PASSWORD_FILE", raising=False)
    before = role_verifiers(servers)
    result = call(
        capsys,
        *("dev", "--exit-after-setup", "--seed-count", "3"),
        *("--database-url", empty_database.admin_url, "--redis-url", servers.redis_url),
        *("--state-dir", state_base(pytestconfig)),
    )
    assert result.returncode == 0, result.stderr
    assert role_verifiers(servers) == before
    assert (
        "role passwords left as they are on this server: securecache_writer, securecache_reader"
        in result.stdout
    )
    assert "demo data: securities: 3 inserted" in result.stdout
    for label, role in (("writer", migrations.WRITER_ROLE), ("reader", migrations.READER_ROLE)):
        assert url_after(label, result.stdout) == derive_url(empty_database.admin_url, user=role)
    passwords = role_passwords(servers, state_base(pytestconfig))
    for secret in server_secrets(servers, passwords):
        assert secret not in result.stdout


@pytest.fixture(scope="module")
def dev_state(pytestconfig: pytest.Config) -> Iterator[Path]:
    """A state directory for embedded dev runs, shared so that only the first runs initdb."""
    base = pytestconfig.rootpath / ".securecache" / f"scratch-{secrets.token_hex(4)}"
    base.mkdir(parents=True)
    yield base
    leftovers = leftover_processes(base)
    shutil.rmtree(base, ignore_errors=True)
    assert leftovers == []


def read_until(process: subprocess.Popen[bytes], marker: str, timeout: float = 60.0) -> str:
    """Stdout of ``process`` up to ``marker`` (fails on exit or timeout); unbuffered reads,
    so that select() and what was read never disagree."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker.encode() not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                process.kill()
                pytest.fail(f"no {marker!r} in time; output so far:\n{seen.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"dev exited early ({process.wait()}):\n{seen.decode()}")
            seen += chunk
    return seen.decode()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_dev_on_embedded_servers_serves_until_stopped(
    dev_state: Path, stop: signal.Signals
) -> None:
    """`dev` alone starts its own servers, seeds them, and Ctrl-C or SIGTERM stops it all."""
    args = ["dev", "--state-dir", str(dev_state), "--seed-count", "20"]
    process = subprocess.Popen(
        [sys.executable, "-m", "securecache", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        shown = read_until(process, "Ctrl-C stops everything.")
        assert "(embedded)" in shown
        assert "***" not in shown  # its own local servers: the URLs in full, to use
        with psycopg.connect(url_after("reader", shown)) as conn:
            assert conn.execute("SELECT count(*) FROM securecache.security").fetchone() == (20,)
        assert leftover_processes(dev_state / "dev") != []
        process.send_signal(stop)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.decode().rstrip().endswith("stopped.")
    assert b"Traceback" not in err
    assert leftover_processes(dev_state / "dev") == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_only(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a TTY, load-securities draws one progress line per batch; piped, it stays quiet."""
    tag = "P" + secrets.token_hex(3)
    csv = tmp_path / "three.csv"
    csv.write_text(HEADER + "".join(f"{tag}-{i},N{i},S{i},XNYS\n" for i in range(3)))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    args = ["load-securities", str(csv), "--batch-size", "2", "--database-url", database.admin_url]
    assert main(args) == 0
    assert terminal.getvalue() == ("\rloading securities: 2/3 rows\rloading securities: 3/3 rows\n")
