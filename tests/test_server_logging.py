"""The access log: off unless SECURECACHE_ACCESS_LOG turns it on, in a real server process."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from launched import launch_environment, launched
from securecache import ConfigurationError
from securecache.ops.dev import ServerInfo
from servers.settings import ServerSettings

MakeSecurities = Any


def access_lines(stderr: str, path: str) -> list[str]:
    """uvicorn's access-log lines for ``GET path`` (``127.0.0.1:PORT - "GET ... HTTP/1.1" 200``)."""
    return re.findall(rf'^.*"GET {re.escape(path)} HTTP/1\.1" 200.*$', stderr, re.MULTILINE)


@pytest.mark.parametrize(("setting", "logged"), [(None, False), ("true", True), ("false", False)])
def test_access_log_follows_the_setting(
    setting: str | None,
    logged: bool,
    database: Any,
    servers: ServerInfo,
    key_prefix: str,
    make_securities: MakeSecurities,
) -> None:
    """``python -m servers public`` logs no line per request by default or with
    SECURECACHE_ACCESS_LOG=false, and one per request with SECURECACHE_ACCESS_LOG=true; its
    start-up lines are logged either way."""
    (sid,) = make_securities(1)
    extra = {} if setting is None else {"SECURECACHE_ACCESS_LOG": setting}
    env = launch_environment(
        SECURECACHE_DATABASE_URL=database.reader_url,
        SECURECACHE_REDIS_URL=servers.redis_url,
        SECURECACHE_KEY_PREFIX=key_prefix,
        **extra,
    )
    path = f"/securities/{sid}"
    with launched("public", env) as running:
        for _ in range(3):
            assert httpx.get(f"{running.url}{path}", timeout=10).status_code == 200
        assert running.stop() == 0, running.stderr
    assert "Application startup complete" in running.stderr
    assert len(access_lines(running.stderr, path)) == (3 if logged else 0), running.stderr


def test_access_log_setting_is_read_and_checked() -> None:
    """SECURECACHE_ACCESS_LOG: unset or empty is off, true/false (1/0, yes/no, on/off) as
    written, anything else a ConfigurationError naming the variable."""
    read = ServerSettings.from_env
    assert read({}).access_log is False
    assert read({"SECURECACHE_ACCESS_LOG": ""}).access_log is False
    for on in ("true", "1", "yes", "ON"):
        assert read({"SECURECACHE_ACCESS_LOG": on}).access_log is True
    for off in ("false", "0", "no", "Off"):
        assert read({"SECURECACHE_ACCESS_LOG": off}).access_log is False
    with pytest.raises(ConfigurationError, match="SECURECACHE_ACCESS_LOG"):
        read({"SECURECACHE_ACCESS_LOG": "sometimes"})
