"""Redis ACL rules: what they say, and that a real Redis enforces them on the library's user."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis
from redis.exceptions import NoPermissionError

from entries import holds
from fix_servers import MakeSecurities
from securecache import ConfigurationError, ScoreUpdate, SecureCache, Settings
from securecache.cache import SCRIPTS
from securecache.keys import KeyScheme, Kind
from securecache.ops.acl import CLUSTER_COMMANDS, LIBRARY_COMMANDS, acl_file_line, setuser_rules
from securecache.ops.redis_admin import load_scripts


def test_rules_start_from_nothing_and_grant_only_the_library_commands() -> None:
    """The rules reset the user, confine keys to the prefix and allow only listed commands."""
    rules = setuser_rules("pw123", "app")
    assert rules[0] == "reset"
    assert "on" in rules
    assert ">pw123" in rules
    assert "~app:v2:*" in rules
    assert "resetchannels" in rules
    assert rules.index("-@all") < min(rules.index(f"+{c}") for c in LIBRARY_COMMANDS)
    grants = {r[1:] for r in rules if r.startswith("+")}
    assert grants == set(LIBRARY_COMMANDS) | {f"evalsha|{sha}" for sha in SCRIPTS}
    assert [r for r in rules if r.startswith("~")] == ["~app:v2:*"]
    assert [r for r in rules if r.startswith("&")] == ["&app:v2:near"]  # near-cache channel
    assert not [r for r in rules if r.startswith(("%", "allkeys", "allcommands", "allchannels"))]
    assert "nopass" not in rules


def test_dangerous_commands_are_never_granted() -> None:
    """No rule set, plain or cluster, allows FLUSHALL, KEYS, CONFIG, EVAL or SCRIPT FLUSH."""
    for cluster in (False, True):
        grants = {r[1:] for r in setuser_rules("pw", cluster=cluster) if r.startswith("+")}
        for command in ("flushall", "flushdb", "keys", "config", "eval", "script", "@all"):
            assert command not in grants
        for command in ("script|flush", "script|load", "evalsha", "select", "eval_ro"):
            assert command not in grants


def test_cluster_rules_add_topology_commands() -> None:
    """With cluster=True the commands the cluster client needs are granted as well."""
    plain = setuser_rules("pw")
    cluster = setuser_rules("pw", cluster=True)
    assert set(cluster) - set(plain) == {f"+{c}" for c in CLUSTER_COMMANDS}


def test_select_is_granted_for_the_configured_database_alone() -> None:
    """Database 0 needs no SELECT; another database gets SELECT of that number and no other."""
    assert not [r for r in setuser_rules("pw") if "select" in r]
    assert [r for r in setuser_rules("pw", database=3) if "select" in r] == ["+select|3"]


def test_a_password_is_required() -> None:
    """An ACL user without a password would be open to anyone: refused."""
    with pytest.raises(ValueError, match="password"):
        setuser_rules("")


def test_rules_validate_the_prefix() -> None:
    """A prefix that could widen the key pattern (a glob) is refused."""
    with pytest.raises(ConfigurationError):
        setuser_rules("pw", "*")
    with pytest.raises(ConfigurationError):
        setuser_rules("pw", "a b")


def test_acl_file_line() -> None:
    """acl_file_line is the same rules as one 'user <name> ...' line of an aclfile."""
    line = acl_file_line("svc", "pw", "app", cluster=True)
    assert line == " ".join(["user", "svc", *setuser_rules("pw", "app", cluster=True)])
    assert line.startswith("user svc reset on >pw ~app:v2:* ")


@pytest.mark.parametrize("password", ["pw ~* +@all", "pw\nuser evil on nopass +@all", "pw\t+@all"])
def test_acl_file_line_refuses_passwords_that_would_split_the_line(password: str) -> None:
    """A password with whitespace would add rules to the aclfile line (~* +@all): refused."""
    with pytest.raises(ValueError, match="password"):
        acl_file_line("svc", password)


def raw_command(client: redis.Redis, *args: str) -> object:
    """Send a raw command (redis-py's execute_command is untyped)."""
    execute: Callable[..., object] = client.execute_command
    return execute(*args)


def _url_with_user(url: str, user: str, password: str) -> str:
    """``url`` with its credentials replaced by ``user``/``password`` (tcp or unix)."""
    parts = urlsplit(url)
    location = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{location}"))


@pytest.fixture
def acl_user(redis_admin: redis.Redis, key_prefix: str) -> Iterator[tuple[str, str]]:
    """A Redis ACL user made with setuser_rules for this test's prefix; deleted afterwards."""
    user = f"securecache-test-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    raw_command(redis_admin, "ACL", "SETUSER", user, *setuser_rules(password, key_prefix))
    try:
        yield user, password
    finally:
        redis_admin.acl_deluser(user)


@pytest.fixture
def restricted(acl_user: tuple[str, str], settings: Settings) -> Iterator[redis.Redis]:
    """A plain client logged in as the ACL user."""
    assert settings.redis_url is not None
    client = redis.Redis.from_url(_url_with_user(settings.redis_url, *acl_user))
    try:
        yield client
    finally:
        client.close()


async def test_acl_user_can_run_the_library(
    acl_user: tuple[str, str],
    settings: Settings,
    redis_admin: redis.Redis,
    make_securities: MakeSecurities,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user made with setuser_rules can read through, fill and write through under its ACL."""
    assert settings.redis_url is not None
    load_scripts(settings.redis_url)  # the administrator's step
    restricted_settings = settings.with_changes(
        redis_url=_url_with_user(settings.redis_url, *acl_user)
    )
    keys = KeyScheme(settings.key_prefix)
    (security_id,) = make_securities(1)
    caplog.set_level(logging.WARNING, logger="securecache")
    async with SecureCache(restricted_settings) as cache:
        security = await cache.securities.get(security_id)
        assert security is not None
        # Had the ACL refused anything, the library would have failed open and left no entry.
        assert holds(redis_admin.get(keys.value(Kind.SECURITY, security_id)), security)
        score = await cache.scores.put(
            security_id, ScoreUpdate(growth=1, value=2, quality=3, momentum=4)
        )
        entry = redis_admin.get(keys.value(Kind.SCORE, security_id))
        assert isinstance(entry, bytes)
        assert entry.startswith(b"1|")
        assert await cache.scores.get(security_id) == score
        assert await cache.securities.get_many([security_id, "NOPE-1"]) == {security_id: security}
        await cache.invalidate(security_id)
        assert redis_admin.exists(keys.value(Kind.SCORE, security_id)) == 0
        health = await cache.health()
        assert health.redis == "ok"
    assert not [r for r in caplog.records if r.name.startswith("securecache")], [
        r.getMessage() for r in caplog.records
    ]


def test_acl_user_may_use_its_own_keys(restricted: redis.Redis, key_prefix: str) -> None:
    """The user logs in and can GET and SET keys under its prefix (so denials below are real)."""
    key = KeyScheme(key_prefix).value(Kind.SCORE, "ACL1")
    assert restricted.set(key, b"0|", px=10_000)
    assert restricted.get(key) == b"0|"
    assert restricted.ping()


@pytest.mark.parametrize(
    "args",
    [
        ("GET", "other:v1:{ACL1}:score"),
        ("SET", "other:v1:{ACL1}:score", "x"),
        ("DEL", "sc2:v1:{ACL1}:score"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "maxmemory"),
        ("EVAL", "while true do end", "0"),
        ("SCRIPT", "LOAD", "while true do end"),
        ("SCRIPT", "LOAD", "return '" + "x" * (1 << 20) + "'"),
        ("EVALSHA", "f" * 40, "0"),
        ("SCRIPT", "FLUSH"),
        ("SELECT", "1"),
        ("SUBSCRIBE", "securecache"),
        ("ACL", "LIST"),
        ("SCAN", "0"),
    ],
    ids=lambda c: " ".join(c[:2]) + (" (1 MiB)" if len(" ".join(c)) > 1000 else ""),
)
def test_acl_user_is_denied_everything_else(restricted: redis.Redis, args: tuple[str, ...]) -> None:
    """Keys outside the prefix, FLUSHALL, KEYS, CONFIG, any code of the user's own (EVAL,
    SCRIPT LOAD of an endless loop or of a megabyte, EVALSHA of a script not the library's),
    other databases and the rest are refused."""
    with pytest.raises(NoPermissionError):
        raw_command(restricted, *args)


def test_acl_user_cannot_run_a_script_an_administrator_loaded_for_someone_else(
    restricted: redis.Redis, redis_admin: redis.Redis
) -> None:
    """Only the library's digests are allowed: another script in the server's cache (loaded
    by anyone) cannot be run by the service user, let alone reach other keys."""
    sha = redis_admin.script_load("return redis.call('GET', KEYS[1])")
    assert sha not in SCRIPTS
    with pytest.raises(NoPermissionError):
        raw_command(restricted, "EVALSHA", sha, "1", "anything")


async def test_without_its_scripts_the_library_fails_open_and_says_so(
    acl_user: tuple[str, str],
    settings: Settings,
    redis_admin: redis.Redis,
    make_securities: MakeSecurities,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After SCRIPT FLUSH (or a restart) a service user cannot load the scripts back: reads are
    served from PostgreSQL, the log names the command to run, health says degraded; once an
    administrator has run it, the cache works again."""
    assert settings.redis_url is not None
    restricted_settings = settings.with_changes(
        redis_url=_url_with_user(settings.redis_url, *acl_user), breaker_reset_seconds=0.05
    )
    [security_id] = make_securities(1)
    redis_admin.script_flush()
    try:
        async with SecureCache(restricted_settings) as cache:
            assert await cache.securities.get(security_id) is not None  # from PostgreSQL
            assert "securecache redis-scripts" in caplog.text
            assert (await cache.health()).redis == "degraded"
            load_scripts(settings.redis_url)
            await asyncio.sleep(0.1)  # past the breaker's pause
            assert await cache.securities.get(security_id) is not None
            assert await cache.securities.get(security_id) is not None
            key = KeyScheme(settings.key_prefix).value(Kind.SECURITY, security_id)
            assert redis_admin.exists(key) == 1
            assert (await cache.health()).redis == "ok"
    finally:
        load_scripts(settings.redis_url)  # other tests share this Redis
