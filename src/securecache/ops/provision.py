"""A database ready for the services: created if need be, migrated, with a URL per role.

Shared by ``securecache dev`` and the test fixtures, so both set up databases the same way.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote, urlencode

import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from securecache.ops import migrations

MIGRATE_LOCK: Final = 0x5EC0_7E57
"""Advisory lock (in the maintenance database) under which one migrator per server runs."""


def derive_url(
    url: str, *, dbname: str | None = None, user: str | None = None, password: str | None = None
) -> str:
    """A ``postgresql://`` URL to the server of ``url`` with another database, user or password.

    Accepts URLs and ``key=value`` strings, so a role's URL can be made from any admin DSN.
    """
    params: dict[str, Any] = {k: v for k, v in conninfo_to_dict(url).items() if v is not None}
    if user is not None:
        params["user"] = user
        params.pop("password", None)
    if password is not None:
        params["password"] = password
    if dbname is not None:
        params["dbname"] = dbname
    host = str(params.pop("host", ""))
    port = str(params.pop("port", ""))
    netloc = ""
    if "user" in params:
        netloc = quote(str(params.pop("user")), safe="")
        if "password" in params:
            netloc += ":" + quote(str(params.pop("password")), safe="")
        netloc += "@"
    if host and "/" not in host and "," not in host:
        netloc += f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    else:
        # Unix-socket directories and host lists only fit in the query string.
        if host:
            params["host"] = host
        if port:
            params["port"] = port
    path = "/" + quote(str(params.pop("dbname")), safe="") if "dbname" in params else ""
    query = "?" + urlencode(params) if params else ""
    return f"postgresql://{netloc}{path}{query}"


@attrs.frozen
class Provisioned:
    """A migrated database: the administrator's URL and one for each service role."""

    admin_url: str = attrs.field(repr=False)
    writer_url: str = attrs.field(repr=False)
    reader_url: str = attrs.field(repr=False)


def provision(
    maintenance_url: str,
    dbname: str | None,
    *,
    writer_password: str | None,
    reader_password: str | None,
) -> Provisioned:
    """Create ``dbname`` on the server of ``maintenance_url`` if missing, then migrate it.

    With ``dbname`` None the database of ``maintenance_url`` itself is migrated (servers of
    someone else's: the database their URL names). Roles are cluster-wide: two processes
    migrating at once would both ALTER the same role rows and one could fail ("tuple
    concurrently updated"), so migrators take turns through an advisory lock held in the
    maintenance database they all share.
    """
    admin_url = maintenance_url if dbname is None else derive_url(maintenance_url, dbname=dbname)
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        if dbname is not None:
            exists = conn.execute(
                "SELECT FROM pg_database WHERE datname = %s", (dbname,)
            ).fetchone()
            if exists is None:
                # template0: template1 may be busy with another session's connection.
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname))
                )
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        migrations.migrate(
            admin_url, writer_password=writer_password, reader_password=reader_password
        )
    return Provisioned(
        admin_url=admin_url,
        writer_url=derive_url(admin_url, user=migrations.WRITER_ROLE, password=writer_password),
        reader_url=derive_url(admin_url, user=migrations.READER_ROLE, password=reader_password),
    )
