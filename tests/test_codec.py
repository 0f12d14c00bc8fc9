"""The wire format: round trips, RFC 3339 timestamps, and untrusted entries never raising."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securecache import Score, Security, codec
from securecache.codec import ABSENT, CORRUPT, EXPIRED, FLOOR, MAX_ENTRY_BYTES, Marker

NOW_MS = 1_780_000_000_000
"""The decoding clock of these tests (Unix ms)."""
HORIZON_MS = NOW_MS + 400_000
"""The latest expiry served: now plus the longest entry life (as the read path computes it)."""
EXPIRES = NOW_MS + 300_000
HEAD2 = b"2|%d|" % EXPIRES
HEAD3 = b"3|%d|" % EXPIRES


def decode(kind: type[Any], raw: bytes | None, id_: str | None = None) -> Any:
    """``codec.decode_entry`` at NOW_MS with HORIZON_MS."""
    return codec.decode_entry(kind, raw, id_, now_ms=NOW_MS, horizon_ms=HORIZON_MS)


ID_FIRST = string.ascii_letters + string.digits
ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(ID_FIRST),
    st.text(alphabet=ID_FIRST + "._:-", max_size=63),
)
texts = st.text(min_size=1, max_size=256).filter(lambda t: t.isprintable() and bool(t.strip()))
offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
stamps = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.one_of(st.just(UTC), offsets),
)
versions = st.integers(min_value=1, max_value=2**63 - 1)
score_values = st.floats(min_value=0, max_value=10, allow_nan=False, allow_infinity=False)

securities = st.builds(
    Security,
    id=ids,
    name=texts,
    symbol=texts,
    exchange=texts,
    version=versions,
    updated_at=stamps,
)
scores = st.builds(
    Score,
    security_id=ids,
    growth=score_values,
    value=score_values,
    quality=score_values,
    momentum=score_values,
    version=versions,
    updated_at=stamps,
)
records = st.one_of(securities, scores)

STAMP = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
SCORE = Score(
    security_id="SEC000001",
    growth=8.5,
    value=7.9,
    quality=9.1,
    momentum=6.8,
    version=3,
    updated_at=STAMP,
)
SECURITY = Security(
    id="SEC000001", name="Acme Corp", symbol="ACME", exchange="XNYS", version=2, updated_at=STAMP
)


@given(securities)
def test_security_entry_round_trip(record: Security) -> None:
    """Any valid Security encodes to an entry that decodes back to an equal record."""
    entry = codec.encode_entry(record, EXPIRES)
    assert entry.startswith(b"%d|%d|" % (record.version, EXPIRES))
    assert decode(Security, entry) == record


@given(scores)
def test_score_entry_round_trip(record: Score) -> None:
    """Any valid Score encodes to an entry that decodes back to an equal record."""
    entry = codec.encode_entry(record, EXPIRES)
    assert entry.startswith(b"%d|%d|" % (record.version, EXPIRES))
    assert decode(Score, entry) == record


@given(records)
def test_json_dict_round_trip(record: Security | Score) -> None:
    """to_dict -> JSON bytes -> from_dict gives back the same record, with RFC 3339 Z stamps."""
    data = to_json_and_back(codec.to_dict(record))
    assert data["updated_at"].endswith("Z")
    assert datetime.fromisoformat(data["updated_at"]) == record.updated_at
    if isinstance(record, Security):
        assert codec.from_dict(Security, data) == record
    else:
        assert codec.from_dict(Score, data) == record


def to_json_and_back(data: dict[str, Any]) -> dict[str, Any]:
    """Pass a mapping through real JSON, as HTTP and Redis do."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(data))
    return result


def test_security_json_shape_is_the_contract() -> None:
    """A Security serialises to exactly the design's field names and values."""
    assert codec.to_dict(SECURITY) == {
        "id": "SEC000001",
        "name": "Acme Corp",
        "symbol": "ACME",
        "exchange": "XNYS",
        "version": 2,
        "updated_at": "2026-01-02T03:04:05.123456Z",
    }


def test_score_json_shape_is_the_contract() -> None:
    """A Score serialises to exactly the design's field names and values."""
    assert orjson.loads(codec.dumps(SCORE)) == {
        "security_id": "SEC000001",
        "growth": 8.5,
        "value": 7.9,
        "quality": 9.1,
        "momentum": 6.8,
        "version": 3,
        "updated_at": "2026-01-02T03:04:05.123456Z",
    }


def test_dumps_handles_lists_and_mappings_of_records() -> None:
    """dumps serialises containers of records with the same field format."""
    decoded = orjson.loads(codec.dumps({"items": [SECURITY], "next_cursor": None}))
    assert decoded["items"] == [codec.to_dict(SECURITY)]
    assert decoded["next_cursor"] is None


@given(stamps)
def test_timestamps_format_as_rfc3339_utc_with_z(stamp: datetime) -> None:
    """format_timestamp always writes UTC with a Z suffix, never +00:00, same instant."""
    text = codec.format_timestamp(stamp)
    assert text.endswith("Z")
    assert "+00:00" not in text
    assert datetime.fromisoformat(text) == stamp


def test_timestamps_with_offsets_are_read_as_utc() -> None:
    """An RFC 3339 stamp with a non-zero offset decodes to the same instant in UTC."""
    data = codec.to_dict(SCORE)
    data["updated_at"] = "2026-01-02T05:04:05.123456+02:00"
    assert codec.from_dict(Score, data).updated_at == STAMP
    assert codec.from_dict(Score, data).updated_at.tzinfo is UTC


def test_absent_marker() -> None:
    """None encodes as the absent marker b'0|<expires>|', which decodes as ABSENT with
    version 0."""
    assert codec.encode_entry(None, EXPIRES) == b"0|%d|" % EXPIRES
    assert codec.entry_version(None) == 0
    assert codec.entry_version(SCORE) == 3
    assert decode(Score, b"0|%d|" % EXPIRES) is ABSENT
    assert decode(Security, b"0|%d|" % EXPIRES) is ABSENT


def test_an_entry_is_served_until_its_own_expiry() -> None:
    """An entry (record or absent marker) whose expiry has passed is EXPIRED: a miss."""
    for raw in (codec.encode_entry(SCORE, NOW_MS), codec.encode_entry(None, NOW_MS - 1)):
        assert decode(Score, raw) is EXPIRED
    assert decode(Score, codec.encode_entry(SCORE, NOW_MS + 1)) == SCORE


def test_an_expiry_beyond_the_longest_entry_life_is_corrupt() -> None:
    """A plant that would be served for longer than any entry the library writes (beyond
    the horizon) is CORRUPT, so no planted entry outlives the longest TTL."""
    assert decode(Score, codec.encode_entry(SCORE, HORIZON_MS)) == SCORE
    assert decode(Score, codec.encode_entry(SCORE, HORIZON_MS + 1)) is CORRUPT
    assert decode(Score, codec.encode_entry(None, HORIZON_MS + 1)) is CORRUPT
    assert decode(Score, b"3|%d|{}" % (10**16)) is CORRUPT


def test_only_servable_small_entries_are_remembered() -> None:
    """Corrupt entries, floors and entries over 1 KiB are decoded every time and never kept:
    a Redis user planting junk cannot fill the memo (a record or absent marker is kept)."""
    memo = codec._MEMOS[Score]
    memo.clear()
    codec._MEMOS[Security].clear()

    def remembered() -> int:
        return len(memo) + len(codec._MEMOS[Security])

    before = remembered()
    for n in range(50):
        assert decode(Score, b"3|%d|{junk %d}" % (EXPIRES, n)) is CORRUPT
        assert decode(Score, b"%d|~" % (n + 1)) is FLOOR
    data = codec.to_dict(SECURITY)
    data["name"] = "\u00e9" * 256  # two bytes each in UTF-8
    data["symbol"] = "\u00e9" * 256
    data["exchange"] = "\u00e9" * 256
    large = HEAD2 + orjson.dumps(data)
    assert len(large) > codec.REMEMBERED_ENTRY_BYTES
    assert isinstance(decode(Security, large), Security)
    assert remembered() == before
    assert decode(Score, codec.encode_entry(SCORE, EXPIRES + 7)) == SCORE
    assert remembered() == before + 1


def test_the_memo_keeps_the_newest_entries_up_to_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past DECODED_ENTRIES the oldest decodings make way: the memo never grows beyond its
    bound, and what it keeps still decodes to the same records."""
    monkeypatch.setattr(codec, "DECODED_ENTRIES", 4)
    memo = codec._MEMOS[Score]
    memo.clear()
    raws = [codec.encode_entry(SCORE, EXPIRES + n) for n in range(10)]
    for raw in raws:
        assert decode(Score, raw) == SCORE
        assert len(memo) <= 4
    assert list(memo) == raws[-4:]
    assert decode(Score, raws[0]) == SCORE  # decoded afresh, and now the newest
    assert list(memo) == [*raws[-3:], raws[0]]


def test_a_floor_decodes_as_floor() -> None:
    """The listener's floor b'<version>|~' is FLOOR (a miss), and a floor of version 0 is
    CORRUPT."""
    assert decode(Score, b"7|~") is FLOOR
    assert decode(Score, b"0|~") is CORRUPT


def test_decoding_is_remembered_by_the_exact_bytes_but_checked_per_key() -> None:
    """The same bytes decode to the very same record (the memo); that record under another
    id's key is still CORRUPT, and other bytes are decoded afresh."""
    raw = codec.encode_entry(SCORE, EXPIRES)
    first = decode(Score, bytes(raw), SCORE.security_id)
    assert first == SCORE
    assert decode(Score, bytes(raw), SCORE.security_id) is first
    assert decode(Score, bytes(raw), "SEC999999") is CORRUPT
    data = codec.to_dict(SCORE)
    data["growth"] = 11.0
    assert decode(Score, HEAD3 + orjson.dumps(data)) is CORRUPT


def test_no_entry_decodes_to_none() -> None:
    """A missing key (None) is "not cached", distinct from ABSENT and CORRUPT."""
    assert decode(Score, None) is None


@given(st.binary(max_size=MAX_ENTRY_BYTES * 2))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    """Decoding any bytes at all yields a record or a marker, never an exception."""
    security = decode(Security, raw)
    assert isinstance(security, Marker | Security)
    score = decode(Score, raw)
    assert isinstance(score, Marker | Score)


@given(st.binary(max_size=200).filter(lambda b: not b.startswith(b"0|") and b"|~" not in b))
def test_random_bytes_are_corrupt(raw: bytes) -> None:
    """Random bytes (other than the absent marker) are CORRUPT, not a record."""
    assert decode(Score, raw) is CORRUPT


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"|",
        b"3",
        b"abc|{}",
        b"-3|{}",
        b" 3|{}",
        b"3|",
        b"3|{",
        b"3|null",
        b"3|[]",
        b"3|{}",
        b"3|\xff\xfe",
        b"0|x",
        b"0|{}",
        b"0|",
        b"3|1780000300000",
        b"3||{}",
        b"0|0|",
        b"0|1780000300000|x",
        b"3|-5|{}",
        b"3|1e12|{}",
        b"\x00\x01\x02",
    ],
)
def test_malformed_entries_are_corrupt(raw: bytes) -> None:
    """Bad headers, bad JSON, empty bodies and junk after the absent marker are CORRUPT."""
    assert decode(Score, raw) is CORRUPT
    assert decode(Security, raw) is CORRUPT


def test_oversized_entries_are_corrupt() -> None:
    """An entry over MAX_ENTRY_BYTES is refused even when its content would be valid."""
    valid = codec.encode_entry(SECURITY, EXPIRES)
    data = codec.to_dict(SECURITY)
    data["name"] = "x" * 200
    padded = HEAD2 + orjson.dumps(data) + b" " * (MAX_ENTRY_BYTES)
    assert len(padded) > MAX_ENTRY_BYTES
    assert decode(Security, valid) == SECURITY
    assert decode(Security, padded) is CORRUPT


@given(versions.filter(lambda v: v != 3))
def test_header_version_must_match_the_body(header: int) -> None:
    """An entry whose header version differs from the record's version is CORRUPT."""
    body = orjson.dumps(codec.to_dict(SCORE))
    assert decode(Score, b"%d|%d|%s" % (header, EXPIRES, body)) is CORRUPT


def test_entry_of_the_other_kind_is_corrupt() -> None:
    """A Score entry read as a Security (and vice versa) is CORRUPT, not half a record."""
    assert decode(Security, codec.encode_entry(SCORE, EXPIRES)) is CORRUPT
    assert decode(Score, codec.encode_entry(SECURITY, EXPIRES)) is CORRUPT


@pytest.mark.parametrize("field", ["security_id", "growth", "version", "updated_at"])
def test_missing_field_is_corrupt(field: str) -> None:
    """A body lacking any one field is CORRUPT."""
    data = codec.to_dict(SCORE)
    del data[field]
    assert decode(Score, HEAD3 + orjson.dumps(data)) is CORRUPT


def test_extra_field_is_corrupt() -> None:
    """A body with a field the record does not have is CORRUPT (forbid_extra_keys)."""
    data = codec.to_dict(SCORE)
    data["admin"] = True
    assert decode(Score, HEAD3 + orjson.dumps(data)) is CORRUPT


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("growth", -1.0),
        ("value", 10.5),
        ("security_id", "bad id"),
        ("updated_at", "2026-01-02T03:04:05"),
        ("updated_at", "yesterday"),
    ],
)
def test_rule_breaking_values_are_corrupt(field: str, bad: object) -> None:
    """Values that break the data model (range, id alphabet, naive stamp) are CORRUPT."""
    data = codec.to_dict(SCORE)
    data[field] = bad
    assert decode(Score, HEAD3 + orjson.dumps(data)) is CORRUPT


# JSON values of the wrong type for each field. A number where text belongs, text or a bool
# where a number belongs, a fraction where an integer belongs: an entry like that was not
# written by this library, so it must not be coerced into a plausible record.
WRONG_TYPES: dict[str, list[object]] = {
    "security_id": [123, 1.5, True, None, ["SEC000001"], {"id": "SEC000001"}],
    "growth": ["5", "5.0", True, False, None, [5.0], {"v": 5}],
    "version": ["3", 3.5, 3.0, True, None, [3]],
    "updated_at": [1767323045, 1767323045.5, True, None, ["2026-01-02T03:04:05Z"]],
}


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        pytest.param(field, bad, id=f"{field}={bad!r}")
        for field, values in WRONG_TYPES.items()
        for bad in values
    ],
)
def test_wrong_json_types_are_corrupt(field: str, bad: object) -> None:
    """A field holding a JSON value of the wrong type makes the entry CORRUPT, not coerced."""
    data = codec.to_dict(SCORE)
    data[field] = bad
    result = decode(Score, HEAD3 + orjson.dumps(data))
    assert result is CORRUPT, f"{field}={bad!r} was accepted as {result!r}"


def test_wrong_type_for_text_fields_of_a_security_is_corrupt() -> None:
    """A Security whose name is a number is CORRUPT, not the string of that number."""
    data = codec.to_dict(SECURITY)
    data["name"] = 42
    assert decode(Security, HEAD2 + orjson.dumps(data)) is CORRUPT


@given(records, st.data())
def test_truncated_entries_never_decode_to_a_different_record(
    record: Security | Score, data: st.DataObject
) -> None:
    """Cutting a valid entry short always gives CORRUPT, never a record."""
    entry = codec.encode_entry(record, EXPIRES)
    cut = data.draw(st.integers(min_value=0, max_value=len(entry) - 1))
    assert decode(Security, entry[:cut]) is CORRUPT
    assert decode(Score, entry[:cut]) is CORRUPT


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson can write
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
"""Any JSON value orjson can write: what a Redis user could put in a field."""


def _reference(kind: Any, data: Any) -> Any:
    """The converter's verdict (cattrs, strict hooks, the records' validators)."""
    try:
        return codec.from_dict(kind, data)
    except Exception:
        return None


@given(
    st.sampled_from([SECURITY, SCORE]),
    st.data(),
)
def test_the_hit_path_decoder_agrees_with_the_converter(
    record: Security | Score, data: st.DataObject
) -> None:
    """For any mutation of a valid record (a field replaced by any JSON value, removed, or an
    extra one added), the fast decoder accepts exactly what the converter accepts, and
    builds the same record."""
    fields = codec.to_dict(record)
    name = data.draw(st.sampled_from(sorted(fields)))
    action = data.draw(st.sampled_from(["replace", "remove", "add", "keep"]))
    if action == "replace":
        fields[name] = data.draw(json_values)
    elif action == "remove":
        del fields[name]
    elif action == "add":
        fields[data.draw(st.text(max_size=8))] = data.draw(json_values)
    body = orjson.dumps(fields)
    kind: Any = type(record)
    assert codec.decode_record(kind, body) == _reference(kind, orjson.loads(body))


@given(records)
def test_the_hit_path_decoder_reads_every_valid_record(record: Security | Score) -> None:
    """Every record the models accept survives the fast decoder unchanged."""
    kind: Any = type(record)
    assert codec.decode_record(kind, codec.dumps(record)) == record
