"""Redis entries as the tests plant and read them, in the wire format of
:mod:`securecache.codec` (whose entries carry their own expiry, so tests compare what an entry
holds rather than its bytes)."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import orjson

from securecache import codec
from securecache.codec import Marker
from securecache.models import Score, Security

DAY_MS = 86_400_000
R = TypeVar("R", Security, Score)


def now_ms() -> int:
    return int(time.time() * 1000)


def plant(record: Security | Score | None, ttl_seconds: float = 300.0) -> bytes:
    """An entry as the library writes it, expiring in ``ttl_seconds``."""
    return codec.encode_entry(record, now_ms() + int(ttl_seconds * 1000))


def forged(version: int, record: dict[str, Any], ttl_seconds: float = 300.0) -> bytes:
    """A well-formed entry of ``record`` (a JSON-ready mapping) claiming ``version``, with an
    expiry as plausible as the library's: what a Redis user could write."""
    return b"%d|%d|%s" % (version, now_ms() + int(ttl_seconds * 1000), orjson.dumps(record))


def decode(
    kind: type[R], raw: Any, id_: str | None = None, *, horizon_ms: int = DAY_MS
) -> R | Marker | None:
    """What the library would make of ``raw`` now (any expiry within a day is accepted)."""
    if isinstance(raw, str):
        raw = raw.encode()
    now = now_ms()
    entry: R | Marker | None = codec.decode_entry(
        kind, raw, id_, now_ms=now, horizon_ms=now + horizon_ms
    )
    return entry


def holds(raw: Any, record: Security | Score) -> bool:
    """True when ``raw`` is a servable entry of exactly ``record``."""
    if isinstance(record, Security):
        return decode(Security, raw, record.id) == record
    return decode(Score, raw, record.security_id) == record
