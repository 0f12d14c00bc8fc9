"""The Redis key scheme.

``{prefix}:v2:{ID}:security`` and ``{prefix}:v2:{ID}:score``: the braces are a Redis Cluster
hash tag, so a security, its score and their leases share one slot; ``v2`` names the wire
format (:mod:`securecache.codec`) so that a new one can roll out beside the old. ``v1``
entries had no expiry of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from securecache.errors import ConfigurationError
from securecache.models import validate_id

WIRE_VERSION: Final = "v2"
PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class Kind(StrEnum):
    """What a key holds."""

    SECURITY = "security"
    SCORE = "score"


def validate_prefix(prefix: str) -> str:
    """Prefixes are short plain words, so keys stay inside ACL patterns like ``sc:*``."""
    if PREFIX_PATTERN.fullmatch(prefix) is None:
        raise ConfigurationError(
            f"key prefix must be 1-32 characters of [A-Za-z0-9_.-], got {prefix!r}",
            field="key_prefix",
        )
    return prefix


class KeyScheme:
    """Builds every key the library writes; nothing else formats Redis keys."""

    __slots__ = ("_base", "_tails")

    def __init__(self, prefix: str = "sc") -> None:
        self._base = f"{validate_prefix(prefix)}:{WIRE_VERSION}:"
        self._tails = {kind: f"}}:{kind.value}" for kind in Kind}
        """What follows the id in a value key (an enum's ``.value`` is slow to read)."""

    @property
    def pattern(self) -> str:
        """Glob matching every key of this scheme (for ACLs and scans)."""
        return f"{self._base}*"

    @property
    def channel(self) -> str:
        """The pub/sub channel on which writers tell near caches what changed."""
        return f"{self._base}near"

    def value(self, kind: Kind, id_: str) -> str:
        """The key of a cached record."""
        return f"{self._base}{{{validate_id(id_)}{self._tails[kind]}"

    def lease(self, kind: Kind, id_: str) -> str:
        """The key of a fill lease: who may fill ``value(kind, id_)`` right now."""
        return self.value(kind, id_) + ":lease"

    def values(self, kind: Kind, ids: Iterable[str]) -> list[str]:
        """The keys of many records, for ids the caller has validated (the read path's ids
        were, at the facade): a batch's keys without checking each id a second time."""
        head, tail = self._base + "{", self._tails[kind]
        return [head + id_ + tail for id_ in ids]

    def pair(self, kind: Kind, id_: str) -> tuple[str, str]:
        """The value key and the lease key of one id (what a lookup reads)."""
        value = self.value(kind, id_)
        return value, value + ":lease"

    def parse(self, key: str) -> tuple[Kind, str] | None:
        """Inverse of :meth:`value`; None for any key that is not a value key of this scheme."""
        if not key.startswith(self._base):
            return None
        rest = key[len(self._base) :]
        if not rest.startswith("{") or "}:" not in rest:
            return None
        id_, _, kind = rest[1:].partition("}:")
        try:
            return Kind(kind), validate_id(id_)
        except ValueError:
            return None
