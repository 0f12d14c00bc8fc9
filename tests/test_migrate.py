"""``migrations.migrate``: the designed schema, idempotent, versions kept by triggers."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from fix_servers import EmptyDatabase, MakeSecurities, state_base
from securecache.ops import migrations
from securecache.ops.dev import ServerInfo, role_passwords
from securecache.ops.provision import provision

Conn = psycopg.Connection[tuple[Any, ...]]

EXPECTED_COLUMNS = {
    ("security", "id", "text", "NO"),
    ("security", "name", "text", "NO"),
    ("security", "symbol", "text", "NO"),
    ("security", "exchange", "text", "NO"),
    ("security", "version", "bigint", "NO"),
    ("security", "updated_at", "timestamp with time zone", "NO"),
    ("score", "security_id", "text", "NO"),
    ("score", "growth", "double precision", "NO"),
    ("score", "value", "double precision", "NO"),
    ("score", "quality", "double precision", "NO"),
    ("score", "momentum", "double precision", "NO"),
    ("score", "version", "bigint", "NO"),
    ("score", "updated_at", "timestamp with time zone", "NO"),
}
EXPECTED_TRIGGERS = {
    ("security", "security_version"),
    ("security", "security_notify"),
    ("score", "score_version"),
    ("score", "score_notify"),
}
EXPECTED_FUNCTIONS = {"bump_version", "notify_change"}
EXPECTED_TABLE_GRANTS = {
    ("securecache_reader", "security", "SELECT"),
    ("securecache_reader", "score", "SELECT"),
    ("securecache_writer", "security", "SELECT"),
    ("securecache_writer", "score", "SELECT"),
    ("securecache_writer", "score", "INSERT"),
    ("securecache_writer", "score", "UPDATE"),
}
# Role attributes: (superuser, create role, create db, can login, bypass RLS).
EXPECTED_ROLES = {
    "securecache_owner": (False, False, False, False, False),
    "securecache_writer": (False, False, False, True, False),
    "securecache_reader": (False, False, False, True, False),
}

# Everything migrate decides, read from the catalogs; compared before and after a re-run.
SNAPSHOT_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner), c.relacl::text
        FROM pg_class c WHERE c.relnamespace = 'securecache'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'securecache' ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'securecache'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'securecache'
        ORDER BY 1""",
    "grants": """
        SELECT grantee, table_name, privilege_type, is_grantable
        FROM information_schema.role_table_grants WHERE table_schema = 'securecache'
        ORDER BY 1, 2, 3""",
    "table_acl": """
        SELECT c.relname, pg_get_userbyid(a.grantee), a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.relnamespace = 'securecache'::regnamespace ORDER BY 1, 2, 3""",
    "functions": """
        SELECT p.proname, pg_get_userbyid(p.proowner), p.proacl::text, md5(p.prosrc),
               p.proconfig::text
        FROM pg_proc p WHERE p.pronamespace = 'securecache'::regnamespace ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid), tgenabled
        FROM pg_trigger WHERE NOT tgisinternal
          AND tgrelid IN (SELECT oid FROM pg_class
                          WHERE relnamespace = 'securecache'::regnamespace)
        ORDER BY 1, 2""",
    "schemas": """
        SELECT nspname, pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace
        WHERE nspname IN ('securecache', 'public') ORDER BY 1""",
    "database": "SELECT datacl::text FROM pg_database WHERE datname = current_database()",
    "roles": """
        SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls,
               rolconnlimit, rolvaliduntil
        FROM pg_roles WHERE rolname LIKE 'securecache%' ORDER BY 1""",
    "role_settings": """
        SELECT r.rolname, s.setdatabase, s.setconfig::text
        FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
        WHERE r.rolname LIKE 'securecache%' ORDER BY 1, 2""",
    "default_acl": """
        SELECT pg_get_userbyid(defaclrole), defaclnamespace, defaclobjtype, defaclacl::text
        FROM pg_default_acl ORDER BY 1, 2, 3""",
}


def snapshot(conn: Conn) -> dict[str, list[tuple[Any, ...]]]:
    return {name: conn.execute(query).fetchall() for name, query in SNAPSHOT_QUERIES.items()}


def migrate(servers: ServerInfo, db: EmptyDatabase, config: pytest.Config) -> None:
    passwords = role_passwords(servers, state_base(config))
    provision(
        servers.admin_url,
        db.name,
        writer_password=passwords.writer,
        reader_password=passwords.reader,
    )


def test_an_empty_database_has_no_securecache_schema(empty_database: EmptyDatabase) -> None:
    """The fixture really hands out an unmigrated database (so the next tests mean something)."""
    with psycopg.connect(empty_database.admin_url) as conn:
        assert conn.execute("SELECT to_regnamespace('securecache')").fetchone() == (None,)


def test_migrate_creates_exactly_the_designed_schema(
    servers: ServerInfo, empty_database: EmptyDatabase, pytestconfig: pytest.Config
) -> None:
    """Tables, columns, triggers, functions, roles and grants are the design's, no more."""
    migrate(servers, empty_database, pytestconfig)
    with psycopg.connect(empty_database.admin_url) as conn:
        tables = conn.execute(
            "SELECT relname, relkind, pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relnamespace = 'securecache'::regnamespace AND relkind IN ('r', 'v', 'm')"
        ).fetchall()
        assert set(tables) == {
            ("security", "r", migrations.OWNER_ROLE),
            ("score", "r", migrations.OWNER_ROLE),
        }
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'securecache'"
        ).fetchall()
        assert set(columns) == EXPECTED_COLUMNS
        keys = conn.execute(
            "SELECT conrelid::regclass::text, contype, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'securecache'::regnamespace "
            "AND contype IN ('p', 'f')"
        ).fetchall()
        assert set(keys) == {
            ("securecache.security", "p", "PRIMARY KEY (id)"),
            ("securecache.score", "p", "PRIMARY KEY (security_id)"),
            (
                "securecache.score",
                "f",
                "FOREIGN KEY (security_id) REFERENCES securecache.security(id) ON DELETE CASCADE",
            ),
        }
        triggers = conn.execute(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = 'securecache'::regnamespace"
        ).fetchall()
        assert set(triggers) == EXPECTED_TRIGGERS
        functions = conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'securecache'::regnamespace"
        ).fetchall()
        assert {f for (f,) in functions} == EXPECTED_FUNCTIONS
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'securecache'"
        ).fetchone()
        assert owner == (migrations.OWNER_ROLE,)
        grants = conn.execute(
            "SELECT pg_get_userbyid(a.grantee), c.relname, a.privilege_type "
            "FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.relnamespace = 'securecache'::regnamespace "
            "AND a.grantee <> c.relowner"
        ).fetchall()
        assert set(grants) == EXPECTED_TABLE_GRANTS
        roles = conn.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls "
            "FROM pg_roles WHERE rolname = ANY(%s)",
            (list(EXPECTED_ROLES),),
        ).fetchall()
        assert {name: tuple(attrs) for name, *attrs in roles} == EXPECTED_ROLES


def test_a_second_migrate_changes_nothing(
    servers: ServerInfo, empty_database: EmptyDatabase, pytestconfig: pytest.Config
) -> None:
    """Re-running migrate leaves every catalog fact it controls exactly as it was."""
    migrate(servers, empty_database, pytestconfig)
    with psycopg.connect(empty_database.admin_url, autocommit=True) as conn:
        before = snapshot(conn)
        assert before["relations"], "the snapshot must see the schema"
        migrate(servers, empty_database, pytestconfig)
        assert snapshot(conn) == before


def test_migrate_takes_back_a_hand_made_grant(
    servers: ServerInfo, empty_database: EmptyDatabase, pytestconfig: pytest.Config
) -> None:
    """A privilege granted by hand (DELETE to the writer, to PUBLIC) is revoked by migrate."""
    migrate(servers, empty_database, pytestconfig)
    with psycopg.connect(empty_database.admin_url, autocommit=True) as conn:
        before = snapshot(conn)
        conn.execute("GRANT DELETE, TRUNCATE ON securecache.security TO securecache_writer")
        conn.execute("GRANT SELECT ON securecache.score TO PUBLIC")
        conn.execute("GRANT CREATE ON SCHEMA securecache TO securecache_reader")
        assert snapshot(conn) != before
        migrate(servers, empty_database, pytestconfig)
        assert snapshot(conn) == before


def row_state(conn: Conn, table: str, key: str, id_: str) -> tuple[int, Any]:
    row = conn.execute(
        f"SELECT version, updated_at FROM securecache.{table} WHERE {key} = %s", (id_,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.parametrize(
    "case",
    [
        ("security", "id", "name = name || ' (renamed)'", "name = name, symbol = symbol"),
        (
            "score",
            "security_id",
            "growth = CASE WHEN growth < 5 THEN growth + 1 ELSE growth - 1 END",
            "growth = growth, value = value",
        ),
    ],
    ids=["security", "score"],
)
def test_version_starts_at_1_and_grows_by_1_per_real_change(
    admin_conn: Conn, make_securities: MakeSecurities, case: tuple[str, str, str, str]
) -> None:
    """Plain SQL: insert gives 1, a change +1 and a new updated_at, a no-op UPDATE nothing."""
    table, key, change, same = case
    [sid] = make_securities(1, with_scores=True)
    version, stamp = row_state(admin_conn, table, key, sid)
    assert version == 1
    update = f"UPDATE securecache.{table} SET {{}} WHERE {key} = %s"
    for expected in (2, 3):
        time.sleep(0.001)  # clock_timestamp() must visibly move
        admin_conn.execute(update.format(change), (sid,))
        version, newer = row_state(admin_conn, table, key, sid)
        assert version == expected
        assert newer > stamp
        stamp = newer
    admin_conn.execute(update.format(same), (sid,))
    assert row_state(admin_conn, table, key, sid) == (3, stamp)


def test_versions_cannot_be_forged(admin_conn: Conn, make_securities: MakeSecurities) -> None:
    """An INSERT or UPDATE naming a version gets the trigger's version, not its own."""
    [sid] = make_securities(1)
    admin_conn.execute(
        "INSERT INTO securecache.score (security_id, growth, value, quality, momentum, version) "
        "VALUES (%s, 1, 2, 3, 4, 42)",
        (sid,),
    )
    assert row_state(admin_conn, "score", "security_id", sid)[0] == 1
    admin_conn.execute("UPDATE securecache.score SET version = 99 WHERE security_id = %s", (sid,))
    assert row_state(admin_conn, "score", "security_id", sid)[0] == 1
    admin_conn.execute(
        "UPDATE securecache.security SET version = 0, name = 'Renamed' WHERE id = %s", (sid,)
    )
    assert row_state(admin_conn, "security", "id", sid)[0] == 2
