"""The database schema, its roles and privileges, applied by ``securecache migrate``.

Run with an administrator's URL (a superuser, or a role with CREATEROLE that owns the
database). Idempotent: every statement is guarded, and grants are reset to exactly the design's
(revoked, then granted again) so a second run changes nothing, and a hand-made extra grant
is taken back. A cluster-wide advisory lock makes concurrent migrators take turns.
"""

from __future__ import annotations

import time
from typing import Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from securecache.models import ID_PATTERN, SCORE_MAX, SCORE_MIN, TEXT_MAX
from securecache.store import CHANNEL

SCHEMA: Final = "securecache"
OWNER_ROLE: Final = "securecache_owner"
WRITER_ROLE: Final = "securecache_writer"
READER_ROLE: Final = "securecache_reader"
_LOCK_KEY: Final = 0x5EC0CAC4E
_ATTEMPTS: Final = 5


def _text_rule(column: str) -> str:
    """The SQL twin of ``models.validate_text``: 1-256 characters, not only spaces, no Cc."""
    return (
        f"length({column}) BETWEEN 1 AND {TEXT_MAX} AND btrim({column}) <> '' "
        f"AND {column} !~ '[\\x01-\\x1f\\x7f-\\x9f]'"
    )


def _score_rule(column: str) -> str:
    """The SQL twin of ``models.validate_score_value`` (NaN compares greater than every
    number in PostgreSQL, so the upper bound refuses it too)."""
    return f"{column} >= {SCORE_MIN:g} AND {column} <= {SCORE_MAX:g}"


_ROLES: Final = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{OWNER_ROLE}') THEN
        CREATE ROLE {OWNER_ROLE} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WRITER_ROLE}') THEN
        CREATE ROLE {WRITER_ROLE} LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER_ROLE}') THEN
        CREATE ROLE {READER_ROLE} LOGIN;
    END IF;
    IF NOT pg_has_role(current_user, '{OWNER_ROLE}', 'MEMBER') THEN
        EXECUTE format('GRANT {OWNER_ROLE} TO %I', current_user);
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another migrator created them first
END
$$;
"""

# What a service role can and cannot undo (docs/security.md says the same to operators):
# - CONNECTION LIMIT is enforcement: changing it needs CREATEROLE, which the roles lack.
# - Session defaults (ALTER ROLE ... SET) are only defaults: PostgreSQL lets every role change
#   its own. They catch a careless client; the library sets the same timeouts on each of its
#   sessions too, so a role's self-edit does not change what the library does; and grants, not
#   the read-only default, are what keep the reader from writing.
SESSION_DEFAULTS: Final = {
    "statement_timeout": "5s",
    "lock_timeout": "2s",
    "idle_in_transaction_session_timeout": "10s",
}
"""Defaults for every session of a service role in the migrated database."""
DEFAULT_CONNECTION_LIMIT: Final = 100
"""Connections each service role may hold on the server (all replicas' pools together)."""

# Objects are created as the owner role, so that the admin who migrates owns nothing.
_OBJECTS: Final = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA} AUTHORIZATION {OWNER_ROLE};
SET ROLE {OWNER_ROLE};

-- Ids use the "C" collation: byte order, the same on every server, so keyset pagination
-- (ORDER BY id) is stable and served by the primary key's index.
CREATE TABLE IF NOT EXISTS {SCHEMA}.security (
    id          text COLLATE "C" PRIMARY KEY CHECK (id ~ '^{ID_PATTERN.pattern}$'),
    name        text NOT NULL CONSTRAINT security_name_valid CHECK ({_text_rule("name")}),
    symbol      text NOT NULL CONSTRAINT security_symbol_valid CHECK ({_text_rule("symbol")}),
    exchange    text NOT NULL CONSTRAINT security_exchange_valid CHECK ({_text_rule("exchange")}),
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- NaN compares greater than every number in PostgreSQL, so "<= 10" also refuses NaN.
CREATE TABLE IF NOT EXISTS {SCHEMA}.score (
    security_id text COLLATE "C" PRIMARY KEY REFERENCES {SCHEMA}.security (id) ON DELETE CASCADE,
    growth      double precision NOT NULL CHECK ({_score_rule("growth")}),
    value       double precision NOT NULL CHECK ({_score_rule("value")}),
    quality     double precision NOT NULL CHECK ({_score_rule("quality")}),
    momentum    double precision NOT NULL CHECK ({_score_rule("momentum")}),
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Databases migrated before the text rules matched the library's get them now.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint WHERE conname = 'security_name_check'
               AND conrelid = '{SCHEMA}.security'::regclass) THEN
        ALTER TABLE {SCHEMA}.security
            DROP CONSTRAINT security_name_check,
            DROP CONSTRAINT IF EXISTS security_symbol_check,
            DROP CONSTRAINT IF EXISTS security_exchange_check,
            ADD CONSTRAINT security_name_valid CHECK ({_text_rule("name")}),
            ADD CONSTRAINT security_symbol_valid CHECK ({_text_rule("symbol")}),
            ADD CONSTRAINT security_exchange_valid CHECK ({_text_rule("exchange")});
    END IF;
END
$$;

-- For the change listener's catch-up after a reconnect ("what changed since T?").
CREATE INDEX IF NOT EXISTS security_updated_at_idx ON {SCHEMA}.security (updated_at);
CREATE INDEX IF NOT EXISTS score_updated_at_idx ON {SCHEMA}.score (updated_at);

-- version starts at 1 and grows by exactly 1 on every real change of the row, whoever makes
-- it; an UPDATE that changes no data keeps the version, so re-loading a file is a no-op.
CREATE OR REPLACE FUNCTION {SCHEMA}.bump_version() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.version := 1;
        NEW.updated_at := clock_timestamp();
    ELSIF (to_jsonb(NEW) - 'version' - 'updated_at')
          IS NOT DISTINCT FROM (to_jsonb(OLD) - 'version' - 'updated_at') THEN
        NEW.version := OLD.version;
        NEW.updated_at := OLD.updated_at;
    ELSE
        NEW.version := OLD.version + 1;
        NEW.updated_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

-- Every committed change is announced, so caches learn of writes made outside the library.
CREATE OR REPLACE FUNCTION {SCHEMA}.notify_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    row_data jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('{CHANNEL}', json_build_object(
        'table', TG_TABLE_NAME,
        'id', coalesce(row_data ->> 'id', row_data ->> 'security_id'),
        'version', CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE (row_data ->> 'version')::bigint END,
        'op', lower(TG_OP))::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER security_version BEFORE INSERT OR UPDATE ON {SCHEMA}.security
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.bump_version();
CREATE OR REPLACE TRIGGER score_version BEFORE INSERT OR UPDATE ON {SCHEMA}.score
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.bump_version();
CREATE OR REPLACE TRIGGER security_notify AFTER INSERT OR UPDATE OR DELETE ON {SCHEMA}.security
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.notify_change();
CREATE OR REPLACE TRIGGER score_notify AFTER INSERT OR UPDATE OR DELETE ON {SCHEMA}.score
    FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.notify_change();

RESET ROLE;
"""

# Grants are reset to exactly the design's on every run.
_GRANTS: Final = f"""
REVOKE ALL ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC, {WRITER_ROLE}, {READER_ROLE};
REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM PUBLIC, {WRITER_ROLE}, {READER_ROLE};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {SCHEMA} FROM PUBLIC, {WRITER_ROLE}, {READER_ROLE};
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {SCHEMA} FROM PUBLIC, {WRITER_ROLE}, {READER_ROLE};
ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

GRANT USAGE ON SCHEMA {SCHEMA} TO {WRITER_ROLE}, {READER_ROLE};
GRANT SELECT ON {SCHEMA}.security TO {WRITER_ROLE}, {READER_ROLE};
GRANT SELECT ON {SCHEMA}.score TO {READER_ROLE};
GRANT SELECT, INSERT, UPDATE ON {SCHEMA}.score TO {WRITER_ROLE};
"""


def _database_grants(dbname: str) -> sql.Composed:
    db = sql.Identifier(dbname)
    return sql.SQL(
        "REVOKE ALL ON DATABASE {db} FROM PUBLIC, {writer}, {reader};"
        "GRANT CONNECT ON DATABASE {db} TO {owner}, {writer}, {reader};"
    ).format(
        db=db,
        owner=sql.Identifier(OWNER_ROLE),
        writer=sql.Identifier(WRITER_ROLE),
        reader=sql.Identifier(READER_ROLE),
    )


def _role_limits(dbname: str, connection_limit: int) -> sql.Composed:
    """Limits the roles cannot lift, and session defaults in this database (see above)."""
    statements: list[sql.Composable] = []
    for role in (WRITER_ROLE, READER_ROLE):
        ident = sql.Identifier(role)
        statements.append(
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                ident, sql.Literal(connection_limit)
            )
        )
        defaults = dict(SESSION_DEFAULTS)
        if role == READER_ROLE:
            defaults["default_transaction_read_only"] = "on"
        for name, value in defaults.items():
            statements.append(
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                    ident, sql.Identifier(dbname), sql.Identifier(name), sql.Literal(value)
                )
            )
    return sql.SQL(";").join(statements)


def revoke_public_access(admin_url: str, databases: list[str]) -> None:
    """``REVOKE CONNECT, TEMPORARY ... FROM PUBLIC`` on other databases of the server.

    PUBLIC may connect to (and make TEMP tables in) every database by default, ``postgres``
    included, and a service role is part of PUBLIC. Whether other applications of the server
    rely on that is the operator's call, so this runs only on the databases named
    (``securecache migrate --revoke-public DB``).
    """
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for dbname in databases:
            conn.execute(
                sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(dbname)
                )
            )


def migrate(
    admin_url: str,
    *,
    writer_password: str | None = None,
    reader_password: str | None = None,
    connection_limit: int = DEFAULT_CONNECTION_LIMIT,
) -> None:
    """Create or update the schema, roles and grants in the database of ``admin_url``.

    Passwords, when given, are set on the service roles (otherwise left as they are:
    trust or certificate authentication needs none).
    """
    # Roles belong to the whole server while the advisory lock covers one database, so two
    # databases migrating at once can collide on the role rows ("tuple concurrently
    # updated"); the loser simply runs again.
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            _migrate_once(admin_url, writer_password, reader_password, connection_limit)
            return
        except (pg_errors.InternalError_, pg_errors.UniqueViolation):
            if attempt == _ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)


def _migrate_once(
    admin_url: str,
    writer_password: str | None,
    reader_password: str | None,
    connection_limit: int,
) -> None:
    with psycopg.connect(admin_url, autocommit=False) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_ROLES)
        conn.execute(_OBJECTS)
        conn.execute(_GRANTS)
        dbname = conn.execute("SELECT current_database()").fetchone()
        assert dbname is not None
        conn.execute(_database_grants(dbname[0]))
        conn.execute(_role_limits(dbname[0], connection_limit))
        for role, password in ((WRITER_ROLE, writer_password), (READER_ROLE, reader_password)):
            if password is not None:
                # Send a SCRAM verifier, never the password itself: statements can end up in
                # the server's log or in pg_stat_statements.
                verifier = conn.pgconn.encrypt_password(
                    password.encode(), role.encode(), b"scram-sha-256"
                ).decode()
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(verifier)
                    )
                )
