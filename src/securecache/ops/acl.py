"""Redis ACL rules for the services: confined to the key prefix and the library's commands.

Every command the library sends is listed here, so a user set up with :func:`setuser_rules`
can do exactly what securecache needs and nothing else: no other keys, no pub/sub channels,
no FLUSHALL, CONFIG, KEYS or EVAL of ad-hoc scripts (the compare-and-set script is loaded
with SCRIPT LOAD and run with EVALSHA; its own GET/SET/DEL are checked against the same
rules). I/O-free.
"""

from __future__ import annotations

from typing import Final

from securecache.keys import KeyScheme

LIBRARY_COMMANDS: Final = (
    "get",
    "mget",
    "set",
    "del",
    "evalsha",
    "script|load",
    "ping",
    "select",
)
"""Every Redis command securecache sends (redis-py's HELLO/AUTH need no grant; SELECT is
sent on connect for a ``redis://host/N`` URL with N other than 0)."""
CLUSTER_COMMANDS: Final = (
    "cluster|slots",
    "cluster|shards",
    "cluster|nodes",
    "readonly",
    "command",
)
"""The extra commands redis-py's cluster client uses to learn the topology."""


def setuser_rules(password: str, key_prefix: str = "sc", *, cluster: bool = False) -> list[str]:
    """Arguments after ``ACL SETUSER <name>``: reset, then grant only what is needed."""
    if not password:
        raise ValueError("an ACL user needs a password")
    commands = LIBRARY_COMMANDS + (CLUSTER_COMMANDS if cluster else ())
    return [
        "reset",
        "on",
        f">{password}",
        f"~{KeyScheme(key_prefix).pattern}",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in commands),
    ]


def acl_file_line(
    user: str, password: str, key_prefix: str = "sc", *, cluster: bool = False
) -> str:
    """The same rules as one line of a Redis ``aclfile`` (for deployments).

    An aclfile line is split on white space, so a user name or password containing any
    would smuggle in rules of its own (``"pw ~* +@all"``): such values are refused.
    """
    for what, value in (("user name", user), ("password", password)):
        if not value or any(ch.isspace() for ch in value):
            raise ValueError(f"an aclfile {what} must be non-empty and contain no white space")
    return " ".join(["user", user, *setuser_rules(password, key_prefix, cluster=cluster)])
