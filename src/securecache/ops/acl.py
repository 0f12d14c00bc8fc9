"""Redis ACL rules for the services: the library's own scripts, on its own keys, and no more.

A service user can run exactly the scripts securecache ships (``+evalsha|<digest>`` for each
of :data:`securecache.cache.SCRIPTS`), and the few plain commands the library sends, on keys
under its prefix, in its own database. It cannot load a script (``SCRIPT LOAD``), so it can
run no code of its own: no ``while true do end`` that makes a shared Redis answer BUSY to
everyone, no megabytes of scripts filling its memory. An administrator loads the scripts
(``securecache redis-scripts``); until then, or after a restart that lost them, the library
fails open and says so. The scripts' own GET/SET/DEL/PTTL are checked against the same rules.
I/O-free.
"""

from __future__ import annotations

from typing import Final

from securecache.cache import SCRIPTS
from securecache.keys import KeyScheme

LIBRARY_COMMANDS: Final = ("get", "mget", "set", "del", "pttl", "ping", "publish", "subscribe")
"""Plain commands the library sends, or that its scripts run (redis-py's HELLO/AUTH need no
grant). ``select`` is granted for the configured database alone, and only when it is not 0
(redis-py sends SELECT on connect for a ``redis://host/N`` URL with N other than 0).
PUBLISH and SUBSCRIBE reach the prefix's near-cache channel alone (``&<channel>``)."""
SCRIPT_COMMANDS: Final = tuple(f"evalsha|{sha}" for sha in sorted(SCRIPTS))
"""One first-argument rule per script the library ships (Redis 6.2 and 7 alike)."""
CLUSTER_COMMANDS: Final = (
    "cluster|slots",
    "command",
    "asking",
)
"""The extra commands redis-py's cluster client sends: CLUSTER SLOTS to learn the topology,
COMMAND to learn where each command's keys are, ASKING to follow a key whose slot is being
migrated. It reads from primaries only, so READONLY is never sent; nor SELECT (a cluster has
one database)."""


def setuser_rules(
    password: str, key_prefix: str = "sc", *, cluster: bool = False, database: int = 0
) -> list[str]:
    """Arguments after ``ACL SETUSER <name>``: reset, then grant only what is needed."""
    if not password:
        raise ValueError("an ACL user needs a password")
    if database < 0:
        raise ValueError("a Redis database number is 0 or more")
    commands = LIBRARY_COMMANDS + SCRIPT_COMMANDS + (CLUSTER_COMMANDS if cluster else ())
    if database:
        commands += (f"select|{database}",)
    return [
        "reset",
        "on",
        f">{password}",
        f"~{KeyScheme(key_prefix).pattern}",
        "resetchannels",
        f"&{KeyScheme(key_prefix).channel}",
        "-@all",
        *(f"+{command}" for command in commands),
    ]


def acl_file_line(
    user: str,
    password: str,
    key_prefix: str = "sc",
    *,
    cluster: bool = False,
    database: int = 0,
) -> str:
    """The same rules as one line of a Redis ``aclfile`` (for deployments).

    An aclfile line is split on white space, so a user name or password containing any
    would smuggle in rules of its own (``"pw ~* +@all"``): such values are refused.
    """
    for what, value in (("user name", user), ("password", password)):
        if not value or any(ch.isspace() for ch in value):
            raise ValueError(f"an aclfile {what} must be non-empty and contain no white space")
    rules = setuser_rules(password, key_prefix, cluster=cluster, database=database)
    return " ".join(["user", user, *rules])
