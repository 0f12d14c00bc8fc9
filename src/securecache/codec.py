"""The wire format, owned by one cattrs converter (orjson).

JSON (HTTP and Redis) uses the design's field names, with ``updated_at`` as RFC 3339 UTC
(``2026-01-02T03:04:05.123456Z``). A Redis entry is ``b"<version>|<expires>|<json>"``: the
version in front lets the compare-and-set script order entries without decoding JSON;
``<expires>`` is when the entry stops being served (Unix milliseconds; its key carries the same
TTL); ``b"0|<expires>|"`` marks an id known to be absent (negative caching); and
``b"<version>|~"`` is a floor left by the change listener: nothing cached, and nothing older
than that version may be. Anything read from Redis is untrusted: a corrupt, oversized or
wrong-shaped entry decodes to :data:`CORRUPT`, which callers treat as a miss, and so does one
whose expiry lies beyond the longest life the library gives an entry (it was not written by
the library, and would otherwise be served for as long as its planter liked). I/O-free.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import orjson
from cattrs.preconf.orjson import make_converter

from securecache.models import (
    CONTROL_CHARACTERS,
    ID_PATTERN,
    SCORE_FIELDS,
    SCORE_MAX,
    SCORE_MIN,
    TEXT_MAX,
    Score,
    Security,
)

MAX_ENTRY_BYTES: Final = 16 * 1024
"""Largest Redis entry accepted on read; a bigger one is not ours and counts as corrupt."""

ABSENT_VERSION: Final = 0


class Marker(enum.Enum):
    """Results of decoding a cache entry that are not records."""

    ABSENT = "absent"
    """The id is known not to exist in PostgreSQL (a negative-cache entry)."""
    CORRUPT = "corrupt"
    """The entry could not be trusted; treat as a miss."""
    FLOOR = "floor"
    """The record changed and is not cached; older versions may not be stored (a miss)."""
    EXPIRED = "expired"
    """The entry's own expiry has passed (the reader's clock runs ahead of Redis's): a miss."""


ABSENT: Final = Marker.ABSENT
CORRUPT: Final = Marker.CORRUPT
FLOOR: Final = Marker.FLOOR
EXPIRED: Final = Marker.EXPIRED
FLOOR_BODY: Final = b"~"

Record = Security | Score
R = TypeVar("R", Security, Score)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_timestamp(value: Any, _type: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("updated_at must be an RFC 3339 string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("updated_at must carry a UTC offset")
    return parsed.astimezone(UTC)


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


converter = make_converter(forbid_extra_keys=True, detailed_validation=False)
"""The one converter of the wire format (JSON over HTTP and in Redis).

Structuring is strict: no coercion of ``"5"`` to 5.0, of 123 to ``"123"`` or of ``true``
to 1, because a value of the wrong type means the entry is not ours.
"""
converter.register_unstructure_hook(datetime, format_timestamp)
converter.register_structure_hook(datetime, _parse_timestamp)
converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)


def to_dict(record: Record) -> dict[str, Any]:
    """The JSON-ready mapping of a record (for HTTP bodies)."""
    result: dict[str, Any] = converter.unstructure(record)
    return result


def dumps(value: Any) -> bytes:
    """Serialise records, lists and mappings of them to JSON bytes."""
    return orjson.dumps(converter.unstructure(value))


def from_dict(kind: type[R], data: Any) -> R:
    """Structure a record from decoded JSON; raises on any shape or rule violation."""
    return converter.structure(data, kind)


def record_id(record: Record) -> str:
    """The id a record is cached under (a score's is its security's)."""
    return record.id if isinstance(record, Security) else record.security_id


def encode_entry(record: Record | None, expires_ms: int) -> bytes:
    """A Redis entry for ``record``, or the absent marker for None, served until
    ``expires_ms`` (Unix milliseconds)."""
    if record is None:
        return b"0|%d|" % expires_ms
    return b"%d|%d|%s" % (record.version, expires_ms, orjson.dumps(converter.unstructure(record)))


def entry_version(record: Record | None) -> int:
    """The version a Redis entry for ``record`` carries (0 for absent)."""
    return ABSENT_VERSION if record is None else record.version


# -- the hit path's decoder -------------------------------------------------------------------
# Every hit decodes an entry that anyone with access to Redis may have written, so every rule
# of the record is checked; but through cattrs and the attrs validators that costs 5-17 us a
# record. These decoders apply the same rules (the models' constants and patterns; a property
# test holds them to the converter's verdict) in straight-line code, then build the frozen
# record without running the validators a second time.

_SECURITY_FIELDS: Final = frozenset(("id", "name", "symbol", "exchange", "version", "updated_at"))
_SCORE_FIELDS: Final = frozenset((*SCORE_FIELDS, "security_id", "version", "updated_at"))
_id_ok = ID_PATTERN.fullmatch
_control = CONTROL_CHARACTERS.search
_new = object.__new__


def _text_ok(value: object) -> bool:
    return (
        type(value) is str
        and len(value) <= TEXT_MAX
        and bool(value.strip(" "))
        and _control(value) is None
    )


def _timestamp(value: object) -> datetime | None:
    if type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if parsed.tzinfo is None else parsed.astimezone(UTC)


def _setters(kind: type[Any]) -> list[tuple[str, Any]]:
    """The slot descriptors' setters of a frozen record: a record built without __init__."""
    return [(field.name, getattr(kind, field.name).__set__) for field in attrs.fields(kind)]


_SECURITY_SETTERS: Final = _setters(Security)
_SCORE_SETTERS: Final = _setters(Score)


def _security(data: Any) -> Security | None:
    if type(data) is not dict or data.keys() != _SECURITY_FIELDS:
        return None
    id_, version = data["id"], data["version"]
    if type(id_) is not str or _id_ok(id_) is None or type(version) is not int or version < 1:
        return None
    if not (_text_ok(data["name"]) and _text_ok(data["symbol"]) and _text_ok(data["exchange"])):
        return None
    updated_at = _timestamp(data["updated_at"])
    if updated_at is None:
        return None
    data["updated_at"] = updated_at
    record = _new(Security)
    for name, setter in _SECURITY_SETTERS:
        setter(record, data[name])
    return record


def _score(data: Any) -> Score | None:
    if type(data) is not dict or data.keys() != _SCORE_FIELDS:
        return None
    id_, version = data["security_id"], data["version"]
    if type(id_) is not str or _id_ok(id_) is None or type(version) is not int or version < 1:
        return None
    for name in SCORE_FIELDS:
        value = data[name]
        kind = type(value)
        if kind is not float:
            if kind is not int:
                return None
            value = data[name] = float(value)
        if not SCORE_MIN <= value <= SCORE_MAX:
            return None
    updated_at = _timestamp(data["updated_at"])
    if updated_at is None:
        return None
    data["updated_at"] = updated_at
    record = _new(Score)
    for name, setter in _SCORE_SETTERS:
        setter(record, data[name])
    return record


_DECODERS: Final[dict[type[Any], Any]] = {Security: _security, Score: _score}


def decode_record(kind: type[R], body: bytes) -> R | None:
    """A record of ``kind`` from JSON bytes, checked against every rule; None if any fails."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    record: R | None = _DECODERS[kind](data)
    return record


DECODED_ENTRIES: Final = 8_192
"""Entries of each kind whose decoding is remembered: see :func:`decode_entry`."""
REMEMBERED_ENTRY_BYTES: Final = 1024
"""Largest entry whose decoding is remembered (ours are 150-300 bytes): with
:data:`DECODED_ENTRIES`, what a Redis user planting entries can make the memo hold is bounded
(16,384 entries of at most 1 KiB and their records: about 30 MB; a few MB in practice)."""

Decoded = tuple[Any, int, str | None]
"""A servable entry's record (or ABSENT), its expiry and its record's id (None: ABSENT)."""

_MEMOS: Final[dict[type[Any], dict[bytes, Decoded]]] = {Security: {}, Score: {}}
"""The remembered decodings of each kind, by the entry's exact bytes, oldest first."""
_MEMO_LOCK: Final = threading.Lock()
"""Taken to add (the sync twin decodes on its callers' threads); reading needs no lock."""


def decode_entry(
    kind: type[R], raw: bytes | None, id_: str | None = None, *, now_ms: int, horizon_ms: int
) -> R | Marker | None:
    """Decode a Redis entry: a record, ABSENT, CORRUPT, FLOOR, EXPIRED, or None when there
    was no entry.

    With ``id_`` (the id of the key it was read from), a well-formed record of another id is
    CORRUPT too: a Redis user may copy one id's entry under another's key. An entry is served
    from ``now_ms`` until its expiry; one whose expiry lies beyond ``horizon_ms`` (now plus
    the longest life the library gives an entry) is CORRUPT.

    The decoding of given bytes never changes and records are immutable, so the decoding of
    recent entries is remembered, by their exact bytes: a hot entry read again from Redis
    costs a dictionary look-up instead of its validation. Only entries that decode to a
    record or an absent marker, and are small, are remembered (the oldest make way): nothing
    a Redis user plants that we would refuse occupies the memory.
    """
    return decode_entries(kind, [id_], [raw], now_ms=now_ms, horizon_ms=horizon_ms)[0]


def decode_entries(
    kind: type[R],
    ids: Sequence[str | None],
    raws: Sequence[bytes | None],
    *,
    now_ms: int,
    horizon_ms: int,
) -> list[R | Marker | None]:
    """:func:`decode_entry` of each entry of a batch read from Redis (``raws[i]`` read from
    the key of ``ids[i]``), under the same rules: one call per batch, not one per entry."""
    decoded: list[R | Marker | None] = []
    append = decoded.append
    memo = _MEMOS[kind]
    for id_, raw in zip(ids, raws, strict=True):
        if raw is None:
            append(None)
            continue
        known = memo.get(raw)
        if known is None:
            size = len(raw)
            fresh = _decode_new_entry(kind, raw) if size <= MAX_ENTRY_BYTES else CORRUPT
            if isinstance(fresh, Marker):
                append(fresh)
                continue
            known = fresh
            if size <= REMEMBERED_ENTRY_BYTES:
                _remember(memo, raw, known)
        entry, expires_ms, entry_id = known
        if expires_ms > horizon_ms:
            append(CORRUPT)
        elif expires_ms <= now_ms:
            append(EXPIRED)
        elif id_ is not None and entry_id is not None and entry_id != id_:
            append(CORRUPT)
        else:
            append(entry)
    return decoded


def _remember(memo: dict[bytes, Decoded], raw: bytes, known: Decoded) -> None:
    with _MEMO_LOCK:
        while len(memo) >= DECODED_ENTRIES:
            del memo[next(iter(memo))]  # the oldest
        memo[raw] = known


def _decode_new_entry(kind: Any, raw: bytes) -> Decoded | Marker:
    """What ``raw`` holds if it may be served (see :data:`Decoded`); else FLOOR or CORRUPT."""
    head, sep, rest = raw.partition(b"|")
    if not sep or not head.isdigit():
        return CORRUPT
    version = int(head)
    if rest == FLOOR_BODY:
        return FLOOR if version != ABSENT_VERSION else CORRUPT
    stamp, sep, body = rest.partition(b"|")
    if not sep or not stamp.isdigit() or len(stamp) > 15:
        return CORRUPT
    expires_ms = int(stamp)
    if not expires_ms:
        return CORRUPT
    if version == ABSENT_VERSION:
        if body:
            return CORRUPT
        return ABSENT, expires_ms, None
    record = decode_record(kind, body)
    if record is None or record.version != version:
        return CORRUPT
    return record, expires_ms, record_id(record)
