"""Secrets in logs (issue 8, finding 6): a password never reaches a terminal or a log line.

A database URL whose password has a malformed percent-escape made psycopg's pool log it in
full on every retry and the CLI echo it; these tests feed such URLs to every edge.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback

import pytest

from securecache import ConfigurationError, SecureCache, Settings
from securecache.redaction import RedactSecrets, redact_url

SECRET = "s3cr%zzet-PASSWORD"
BAD_URLS = {
    "database_url": f"postgresql://writer:{SECRET}@127.0.0.1:5432/app",
    "redis_url": f"redis://svc:{SECRET}@127.0.0.1:6379/0",
}


@pytest.mark.parametrize("field", sorted(BAD_URLS))
def test_settings_refuse_a_malformed_url_without_echoing_it(field: str) -> None:
    """Settings (from code or from the environment) name the variable, never the password."""
    values = {"database_url": "postgresql://h/db", field: BAD_URLS[field]}
    with pytest.raises(ConfigurationError) as caught:
        Settings(database_url=values["database_url"], redis_url=values.get("redis_url"))
    # Not in the message, nor in a traceback that would show what was chained to it.
    assert SECRET not in "".join(traceback.format_exception(caught.value))
    env = {f"SECURECACHE_{k.upper()}": v for k, v in values.items()}
    with pytest.raises(ConfigurationError) as from_env:
        Settings.from_env(env)
    assert SECRET not in str(from_env.value)


def test_the_cli_refuses_a_malformed_url_in_one_line_without_the_password() -> None:
    """``securecache migrate`` with such a URL exits 1 with one line that hides the password."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "securecache",
            "migrate",
            "--database-url",
            BAD_URLS["database_url"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert SECRET not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "not a valid PostgreSQL URL" in result.stderr


def test_library_loggers_redact_what_other_code_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The second net: once a cache exists, a password logged by psycopg's pool or redis-py
    (in a URL or as ``password=``) reaches handlers as ``***``."""
    SecureCache(Settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    with caplog.at_level(logging.WARNING):
        logging.getLogger("psycopg.pool").warning(
            "error connecting in %r: %s", "securecache", f"postgresql://u:{SECRET}@h/db"
        )
        logging.getLogger("psycopg").warning("connection to host=h password=%s failed", SECRET)
        logging.getLogger("redis").warning("cannot reach redis://:%s@h:1/0", SECRET)
        # Child loggers, whose records a parent's filter never sees:
        logging.getLogger("redis.asyncio.connection").warning("redis://u:%s@h/0", SECRET)
        logging.getLogger("psycopg.pq").warning("host=h password=%s", SECRET)
    assert len(caplog.records) == 5
    assert SECRET not in caplog.text
    assert caplog.text.count("***") == 5


def test_the_filter_leaves_other_messages_alone() -> None:
    """A record without a secret keeps its message and arguments untouched."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "took %d ms", (5,), None)
    assert RedactSecrets().filter(record)
    assert (record.msg, record.args) == ("took %d ms", (5,))


def test_redact_url_hides_every_password_parameter() -> None:
    """The password in the authority and ``password``/``sslpassword`` in the query go."""
    url = f"postgresql://u:{SECRET}@h/db?sslmode=require&sslpassword=key-pass&password=x"
    shown = redact_url(url)
    assert shown is not None
    assert SECRET not in shown
    assert "key-pass" not in shown
    assert "password=***" in shown
    assert "sslpassword=***" in shown
    assert "sslmode=require" in shown
