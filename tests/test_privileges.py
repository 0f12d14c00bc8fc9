"""Least privilege, proven by trying: each role can do its job and nothing else.

Every attempt runs in a transaction that is rolled back, so a grant that is wrongly present
fails the test without damaging the session's database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from fix_servers import Database, MakeSecurities
from securecache.ops import migrations

Conn = psycopg.Connection[tuple[Any, ...]]

# %(sid)s: a security with a score; %(fresh)s: one without; %(new)s: an id that exists nowhere.
READS = {
    "select security": "SELECT * FROM securecache.security WHERE id = %(sid)s",
    "select score": "SELECT * FROM securecache.score WHERE security_id = %(sid)s",
}
SCORE_WRITES = {
    "insert score": (
        "INSERT INTO securecache.score (security_id, growth, value, quality, momentum) "
        "VALUES (%(fresh)s, 1, 2, 3, 4)"
    ),
    "update score": "UPDATE securecache.score SET growth = 7 WHERE security_id = %(sid)s",
}
SECURITY_WRITES = {
    "insert security": (
        "INSERT INTO securecache.security (id, name, symbol, exchange) "
        "VALUES (%(new)s, 'Intruder', 'INT', 'XTST')"
    ),
    "update security": "UPDATE securecache.security SET name = 'Hacked' WHERE id = %(sid)s",
    "delete security": "DELETE FROM securecache.security WHERE id = %(sid)s",
    "truncate security": "TRUNCATE securecache.security CASCADE",
}
DESTRUCTIVE_SCORE_WRITES = {
    "delete score": "DELETE FROM securecache.score WHERE security_id = %(sid)s",
    "truncate score": "TRUNCATE securecache.score",
}
DDL = {
    "create table in public": "CREATE TABLE public.intruder (i int)",
    "create table in securecache": "CREATE TABLE securecache.intruder (i int)",
    "create function in securecache": (
        "CREATE FUNCTION securecache.intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'"
    ),
    "create schema": "CREATE SCHEMA intruder",
    "create temp table": "CREATE TEMP TABLE intruder (i int)",
    "alter table": "ALTER TABLE securecache.score ADD COLUMN intruder int",
    "disable trigger": "ALTER TABLE securecache.security DISABLE TRIGGER security_version",
    "drop table": "DROP TABLE securecache.score",
    "become owner": f"SET ROLE {migrations.OWNER_ROLE}",
}

WRITER_ALLOWED = {**READS, **SCORE_WRITES}
WRITER_DENIED = {**SECURITY_WRITES, **DESTRUCTIVE_SCORE_WRITES, **DDL}
READER_ALLOWED = READS
READER_DENIED = {**SCORE_WRITES, **SECURITY_WRITES, **DESTRUCTIVE_SCORE_WRITES, **DDL}

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
EXPECTED_PRIVILEGES = {
    (migrations.WRITER_ROLE, "security", "SELECT"),
    (migrations.WRITER_ROLE, "score", "SELECT"),
    (migrations.WRITER_ROLE, "score", "INSERT"),
    (migrations.WRITER_ROLE, "score", "UPDATE"),
    (migrations.READER_ROLE, "security", "SELECT"),
    (migrations.READER_ROLE, "score", "SELECT"),
}


@pytest.fixture
def params(make_securities: MakeSecurities) -> dict[str, str]:
    [sid] = make_securities(1, with_scores=True)
    [fresh] = make_securities(1)
    return {"sid": sid, "fresh": fresh, "new": sid + ".new"}


def connect(url: str) -> Iterator[Conn]:
    with psycopg.connect(url, autocommit=True) as conn:
        # Switch the reader's read-only default off, so that denials prove the GRANTs and
        # not merely that setting (which has a test of its own below).
        conn.execute("SET default_transaction_read_only = off")
        yield conn


@pytest.fixture
def writer(database: Database) -> Iterator[Conn]:
    yield from connect(database.writer_url)


@pytest.fixture
def reader(database: Database) -> Iterator[Conn]:
    yield from connect(database.reader_url)


def attempt(conn: Conn, statement: str, params: dict[str, str]) -> None:
    """Run ``statement`` in a transaction that is always rolled back."""
    with conn.transaction(force_rollback=True):
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("off",)
        conn.execute(statement, params)


@pytest.mark.parametrize("statement", WRITER_ALLOWED.values(), ids=WRITER_ALLOWED.keys())
def test_writer_may_read_both_tables_and_write_scores(
    writer: Conn, params: dict[str, str], statement: str
) -> None:
    """The internal API's role: SELECT security; SELECT, INSERT, UPDATE score."""
    attempt(writer, statement, params)


@pytest.mark.parametrize("statement", WRITER_DENIED.values(), ids=WRITER_DENIED.keys())
def test_writer_may_do_nothing_else(writer: Conn, params: dict[str, str], statement: str) -> None:
    """Securities, deletes, truncates and schema changes are refused to the writer."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        attempt(writer, statement, params)


@pytest.mark.parametrize("statement", READER_ALLOWED.values(), ids=READER_ALLOWED.keys())
def test_reader_may_read_both_tables(reader: Conn, params: dict[str, str], statement: str) -> None:
    """The public API's role: SELECT on security and score."""
    attempt(reader, statement, params)


@pytest.mark.parametrize("statement", READER_DENIED.values(), ids=READER_DENIED.keys())
def test_reader_may_write_nothing(reader: Conn, params: dict[str, str], statement: str) -> None:
    """Every write and schema change is refused by privilege, read-only default aside."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        attempt(reader, statement, params)


def test_reader_sessions_are_read_only_by_default(
    database: Database, params: dict[str, str]
) -> None:
    """Second safety net: a reader session refuses writes before privileges are checked."""
    with psycopg.connect(database.reader_url, autocommit=True) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(SCORE_WRITES["update score"], params)


def test_table_privileges_are_exactly_the_design(admin_conn: Conn) -> None:
    """has_table_privilege over every role, table and privilege matches the design's list."""
    granted = set()
    for role in (migrations.WRITER_ROLE, migrations.READER_ROLE):
        for table in ("security", "score"):
            for privilege in TABLE_PRIVILEGES:
                row = admin_conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)",
                    (role, f"securecache.{table}", privilege),
                ).fetchone()
                if row == (True,):
                    granted.add((role, table, privilege))
    assert granted == EXPECTED_PRIVILEGES


def test_public_has_no_privileges_at_all(admin_conn: Conn, database: Database) -> None:
    """PUBLIC (every role, present and future) gets nothing: tables, schemas, db, functions."""
    checks = [
        *(
            ("has_table_privilege", f"securecache.{table}", privilege)
            for table in ("security", "score")
            for privilege in TABLE_PRIVILEGES
        ),
        ("has_schema_privilege", "securecache", "USAGE"),
        ("has_schema_privilege", "securecache", "CREATE"),
        ("has_schema_privilege", "public", "CREATE"),
        ("has_database_privilege", database.name, "CONNECT"),
        ("has_database_privilege", database.name, "CREATE"),
        ("has_database_privilege", database.name, "TEMPORARY"),
        ("has_function_privilege", "securecache.bump_version()", "EXECUTE"),
        ("has_function_privilege", "securecache.notify_change()", "EXECUTE"),
    ]
    granted = []
    for function, target, privilege in checks:
        query = psycopg.sql.SQL("SELECT {}('public', %s, %s)").format(
            psycopg.sql.Identifier(function)
        )
        if admin_conn.execute(query, (target, privilege)).fetchone() == (True,):
            granted.append((function, target, privilege))
    assert granted == []
