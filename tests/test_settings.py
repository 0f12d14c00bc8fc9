"""Settings from the environment: every field, secret files, loud failures, redacted reprs."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securecache import ConfigurationError, Settings
from securecache.redaction import redact_url
from securecache.settings import ENV_PREFIX

# One non-default value for every field, as the environment would spell it, and the value
# Settings must end up holding.
EVERY_FIELD: dict[str, tuple[str, Any]] = {
    "SECURECACHE_DATABASE_URL": (
        "postgresql://writer:pw@db.example:5432/app",
        "postgresql://writer:pw@db.example:5432/app",
    ),
    "SECURECACHE_REDIS_URL": (
        "rediss://svc:pw@cache.example:6380/2",
        "rediss://svc:pw@cache.example:6380/2",
    ),
    "SECURECACHE_REDIS_CLUSTER": ("true", True),
    "SECURECACHE_TTL_SECONDS": ("120.5", 120.5),
    "SECURECACHE_NEGATIVE_TTL_SECONDS": ("7", 7.0),
    "SECURECACHE_TTL_JITTER": ("0.25", 0.25),
    "SECURECACHE_KEY_PREFIX": ("app-1", "app-1"),
    "SECURECACHE_LISTEN_CHANGES": ("on", True),
    "SECURECACHE_LOCAL_CACHE_SIZE": ("1000", 1000),
    "SECURECACHE_LOCAL_CACHE_TTL_SECONDS": ("0.5", 0.5),
    "SECURECACHE_DB_POOL_MIN_SIZE": ("2", 2),
    "SECURECACHE_DB_POOL_MAX_SIZE": ("20", 20),
    "SECURECACHE_DB_TIMEOUT_SECONDS": ("3", 3.0),
    "SECURECACHE_REDIS_TIMEOUT_SECONDS": ("0.1", 0.1),
    "SECURECACHE_REDIS_MAX_CONNECTIONS": ("8", 8),
    "SECURECACHE_BREAKER_FAILURES": ("3", 3),
    "SECURECACHE_BREAKER_RESET_SECONDS": ("4.5", 4.5),
    "SECURECACHE_LEASE_MS": ("750", 750),
    "SECURECACHE_LEASE_WAIT_MS": ("50", 50),
    "SECURECACHE_AUDIT_SAMPLE_RATE": ("0.01", 0.01),
    "SECURECACHE_AUDIT_GRACE_SECONDS": ("2.5", 2.5),
}


def _var(field: str) -> str:
    return ENV_PREFIX + field.upper()


def test_the_table_covers_every_field() -> None:
    """Each Settings field has a SECURECACHE_ variable here, so a new field must be tested."""
    assert set(EVERY_FIELD) == {_var(f.name) for f in attrs.fields(Settings)}


def test_every_field_is_read_from_its_variable() -> None:
    """Setting every variable gives a Settings holding each parsed value."""
    settings = Settings.from_env({var: raw for var, (raw, _) in EVERY_FIELD.items()})
    for field in attrs.fields(Settings):
        expected = EVERY_FIELD[_var(field.name)][1]
        assert getattr(settings, field.name) == expected, field.name


def test_defaults_when_nothing_is_set() -> None:
    """An empty environment gives the documented defaults (no URLs, prefix sc, no listener)."""
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.database_url is None
    assert settings.redis_url is None
    assert settings.key_prefix == "sc"
    assert settings.listen_changes is False
    assert settings.local_cache_size == 0


def test_empty_variables_count_as_unset() -> None:
    """A variable set to the empty string leaves the default in place."""
    assert Settings.from_env({"SECURECACHE_TTL_SECONDS": "", "SECURECACHE_REDIS_URL": ""}) == (
        Settings()
    )


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, from_env reads os.environ."""
    monkeypatch.setenv("SECURECACHE_KEY_PREFIX", "from-env")
    monkeypatch.setenv("SECURECACHE_NEGATIVE_TTL_SECONDS", "9")
    settings = Settings.from_env()
    assert settings.key_prefix == "from-env"
    assert settings.negative_ttl_seconds == 9.0


def test_overrides_win_over_the_environment() -> None:
    """Keyword overrides replace what the environment says."""
    settings = Settings.from_env({"SECURECACHE_TTL_SECONDS": "10"}, ttl_seconds=20.0)
    assert settings.ttl_seconds == 20.0


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "on"])
def test_true_spellings(raw: str) -> None:
    """The usual spellings of true turn a flag on."""
    assert Settings.from_env({"SECURECACHE_LISTEN_CHANGES": raw}).listen_changes is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off"])
def test_false_spellings(raw: str) -> None:
    """The usual spellings of false turn a flag off."""
    env = {"SECURECACHE_REDIS_CLUSTER": raw}
    assert Settings.from_env(env).redis_cluster is False


@pytest.mark.parametrize("field", ["database_url", "redis_url"], ids=lambda f: f.upper())
def test_secrets_come_from_files(tmp_path: Path, field: str) -> None:
    """<VAR>_FILE names a file (a mounted Secret) whose stripped content is the value."""
    values = {
        "database_url": "postgresql://writer:s3cret@db/app",
        "redis_url": "redis://svc:s3cret@cache:6379/0",
    }
    secret = tmp_path / "secret"
    secret.write_text(values[field] + "\n", encoding="utf-8")
    settings = Settings.from_env({_var(field) + "_FILE": str(secret)})
    assert getattr(settings, field) == values[field].strip()


def test_the_variable_wins_over_its_file(tmp_path: Path) -> None:
    """When both VAR and VAR_FILE are set, the variable itself is used."""
    secret = tmp_path / "url"
    secret.write_text("postgresql://from-file/db", encoding="utf-8")
    env = {
        "SECURECACHE_DATABASE_URL": "postgresql://from-var/db",
        "SECURECACHE_DATABASE_URL_FILE": str(secret),
    }
    assert Settings.from_env(env).database_url == "postgresql://from-var/db"


def test_an_unreadable_secret_file_names_the_variable(tmp_path: Path) -> None:
    """A _FILE pointing nowhere fails at start-up naming the _FILE variable."""
    missing = tmp_path / "nope"
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"SECURECACHE_REDIS_URL_FILE": str(missing)})
    assert "SECURECACHE_REDIS_URL_FILE" in str(info.value)
    assert info.value.field == "redis_url"


def test_non_secret_fields_have_no_file_variant(tmp_path: Path) -> None:
    """Only secrets are read from files; a _FILE for an ordinary field is ignored."""
    path = tmp_path / "ttl"
    path.write_text("5", encoding="utf-8")
    assert Settings.from_env({"SECURECACHE_TTL_SECONDS_FILE": str(path)}).ttl_seconds == 300.0


BAD_VALUES: list[tuple[str, str]] = [
    # Values that cannot be parsed at all.
    ("SECURECACHE_TTL_SECONDS", "five"),
    ("SECURECACHE_LOCAL_CACHE_SIZE", "1.5"),
    ("SECURECACHE_REDIS_CLUSTER", "maybe"),
    ("SECURECACHE_LISTEN_CHANGES", "2"),
    ("SECURECACHE_LEASE_MS", "10ms"),
    # Values that parse but break a rule.
    ("SECURECACHE_TTL_SECONDS", "0"),
    ("SECURECACHE_TTL_SECONDS", "-1"),
    ("SECURECACHE_TTL_SECONDS", "nan"),
    ("SECURECACHE_TTL_SECONDS", "inf"),
    ("SECURECACHE_NEGATIVE_TTL_SECONDS", "0"),
    ("SECURECACHE_NEGATIVE_TTL_SECONDS", "inf"),
    ("SECURECACHE_TTL_JITTER", "1"),
    ("SECURECACHE_TTL_JITTER", "-0.1"),
    ("SECURECACHE_LOCAL_CACHE_SIZE", "-1"),
    ("SECURECACHE_DB_POOL_MIN_SIZE", "-1"),
    ("SECURECACHE_DB_POOL_MAX_SIZE", "0"),
    ("SECURECACHE_DB_TIMEOUT_SECONDS", "0"),
    ("SECURECACHE_REDIS_TIMEOUT_SECONDS", "-0.5"),
    ("SECURECACHE_REDIS_MAX_CONNECTIONS", "0"),
    ("SECURECACHE_BREAKER_FAILURES", "0"),
    ("SECURECACHE_BREAKER_RESET_SECONDS", "0"),
    ("SECURECACHE_LEASE_MS", "0"),
    ("SECURECACHE_KEY_PREFIX", "has space"),
    ("SECURECACHE_KEY_PREFIX", "x" * 33),
    ("SECURECACHE_DATABASE_URL", "mysql://db/app"),
    ("SECURECACHE_REDIS_URL", "http://cache:6379"),
]


BAD_IDS = [f"{var}={raw[:40]}" for var, raw in BAD_VALUES]


@pytest.mark.parametrize(("var", "raw"), BAD_VALUES, ids=BAD_IDS)
def test_bad_values_are_refused_at_start_up(var: str, raw: str) -> None:
    """Every malformed or out-of-range value raises ConfigurationError for its field."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({var: raw})
    assert info.value.field == var.removeprefix(ENV_PREFIX).lower()


@pytest.mark.parametrize(("var", "raw"), BAD_VALUES, ids=BAD_IDS)
def test_bad_values_name_the_variable(var: str, raw: str) -> None:
    """The error for a bad value names the environment variable the operator has to fix."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({var: raw})
    assert var in str(info.value), f"{str(info.value)!r} does not name {var}"


@pytest.mark.parametrize(
    ("field", "bad"),
    [("ttl_seconds", 0.0), ("ttl_jitter", 1.0), ("key_prefix", "a b"), ("database_url", "x")],
)
def test_constructor_validates_too(field: str, bad: object) -> None:
    """Settings(...) in code is held to the same rules as the environment."""
    fields: dict[str, Any] = {field: bad}
    with pytest.raises(ConfigurationError):
        Settings(**fields)
    with pytest.raises(ConfigurationError):
        Settings().with_changes(**{field: bad})


def test_with_changes_returns_a_validated_copy() -> None:
    """with_changes leaves the original alone and returns a copy with the change."""
    base = Settings()
    changed = base.with_changes(ttl_seconds=12.0)
    assert changed.ttl_seconds == 12.0
    assert base.ttl_seconds == 300.0


passwords = st.text(alphabet=string.ascii_letters + string.digits + "-_.~!$", min_size=8).map(
    lambda s: "Pw" + s
)


@given(passwords, passwords)
def test_repr_hides_passwords(db_pw: str, redis_pw: str) -> None:
    """No password of either URL appears in repr() or str() of Settings."""
    settings = Settings(
        database_url=f"postgresql://writer:{db_pw}@db.example:5432/app",
        redis_url=f"rediss://svc:{redis_pw}@cache.example:6380/0",
    )
    for text in (repr(settings), str(settings)):
        assert db_pw not in text
        assert redis_pw not in text
        assert "writer:***@db.example" in text
        assert "svc:***@cache.example" in text


def test_repr_hides_percent_encoded_passwords() -> None:
    """A password with reserved characters (percent-encoded in the URL) is hidden too."""
    settings = Settings(redis_url="redis://:p%40ss%3Aw0rd@cache:6379/0")
    assert "p%40ss" not in repr(settings)
    assert "w0rd" not in repr(settings)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://writer@db.example/app?password=Hunter2Secret",
        "redis://cache.example:6379/0?password=Hunter2Secret",
    ],
)
def test_repr_hides_passwords_given_as_query_parameters(url: str) -> None:
    """libpq and redis-py both accept ?password=...; that form must be hidden as well."""
    field = "database_url" if url.startswith("postgresql") else "redis_url"
    fields: dict[str, Any] = {field: url}
    settings = Settings(**fields)
    assert "Hunter2Secret" not in repr(settings)


def test_redact_url_leaves_urls_without_passwords_alone() -> None:
    """URLs without a password (and None) come back unchanged."""
    assert redact_url(None) is None
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redact_url("postgresql://writer@db/app") == "postgresql://writer@db/app"
    assert redact_url("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
