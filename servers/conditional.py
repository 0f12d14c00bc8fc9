"""Conditional requests (RFC 9110 section 13): entity tags, If-None-Match and If-Match.

A record's entity tag is its row version (``"7"``), which changes with every write; a page's
is a digest of the bytes sent. If-None-Match lets a client that holds the current copy get a
304 without a body; If-Match lets a writer say which version it read, so a concurrent write
is refused with 412 instead of lost.

Each header is declared once as a parameter kind (:data:`IF_NONE_MATCH`, :data:`IF_MATCH`),
which both parses it and documents it:

- If-None-Match is free text: a value that is not an entity-tag list is no condition, and the
  representation is sent in full (a cache's mistake must not break a read).
- If-Match follows the grammar ``"*" / #entity-tag`` exactly, and the document carries that
  grammar as its pattern. A value outside it is a 422. An empty list (``""``, ``" , "``) is
  well-formed and matches no version, so the write is refused with 412, as RFC 9110 13.1.1
  asks: a client that meant to send a condition never gets an unconditional write.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import attrs
from starlette.responses import Response

from securecache import Score, Security, codec
from servers.params import JSON, Kind, text
from servers.schemas import anchored

_ETAGC: Final = r"[\x21\x23-\x7e\x80-\xff]"
ENTITY_TAG: Final = re.compile(rf'(?:W/)?"{_ETAGC}*"')
"""One entity tag; it may contain commas, so a list is not split on them."""
_OWS: Final = r"[ \t]*"
_LIST: Final = rf"[ \t,]*(?:{ENTITY_TAG.pattern}(?:{_OWS},[ \t,]*{ENTITY_TAG.pattern})*)?[ \t,]*"
IF_MATCH_GRAMMAR: Final = re.compile(rf"{_OWS}(?:\*|{_LIST}){_OWS}")
"""``"*"`` or a comma-separated list of entity tags, empty elements allowed (RFC 9110 5.6.1)."""
_VERSION_TAG: Final = re.compile(r'"([1-9][0-9]{0,17})"')


def entity_tags(value: str) -> tuple[str, ...] | None:
    """The entity tags of an If-Match or If-None-Match value, ``("*",)`` for any, or None
    when it is not a valid list."""
    if IF_MATCH_GRAMMAR.fullmatch(value) is None:
        return None
    if value.strip(" \t") == "*":
        return ("*",)
    # The grammar holds, so every tag starts at a quote (or W/) outside another tag.
    return tuple(m.group() for m in ENTITY_TAG.finditer(value))


def version_etag(version: int) -> str:
    """A record's strong entity tag: its row version, which changes with every write."""
    return f'"{version}"'


def body_etag(body: bytes) -> str:
    """A page's entity tag: a digest of exactly what was sent."""
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def none_match(header: str | None, etag: str) -> bool:
    """If-None-Match by weak comparison (RFC 9110 13.1.2): does the client hold this one?"""
    tags = None if header is None else entity_tags(header)
    if tags is None:
        return False  # no condition, or one we cannot read: answer in full
    return "*" in tags or etag in {t.removeprefix("W/") for t in tags}


class _Encoded(Response):
    """A response built from headers already encoded: the same bytes Starlette's
    ``Response(body, media_type=JSON, headers=...)`` sends, without its per-request header
    bookkeeping (the hot path of every cached read)."""

    def __init__(
        self, status_code: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = raw_headers


_JSON_TYPE: Final = (b"content-type", JSON.encode())


def _headers(etag: str, cache_control: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """The tags (what a 304 carries too, first), then the body's length and type."""
    return [
        (b"etag", etag.encode("latin-1")),
        (b"cache-control", cache_control.encode("latin-1")),
        (b"content-length", str(len(body)).encode()),
        _JSON_TYPE,
    ]


def _answer(
    if_none_match: str | None, body: bytes, etag: str, headers: list[tuple[bytes, bytes]]
) -> Response:
    """200 with the body, or 304 with the tags alone when If-None-Match already names it."""
    if if_none_match is not None and none_match(if_none_match, etag):
        return _Encoded(304, b"", headers[:2])
    return _Encoded(200, body, headers)


def representation(
    if_none_match: str | None, body: bytes, etag: str, cache_control: str
) -> Response:
    """200 with the body, or 304 when If-None-Match already names it; both carry the tags."""
    return _answer(if_none_match, body, etag, _headers(etag, cache_control, body))


_ENCODED_RECORDS: Final = 4096
"""Records whose encoding :func:`record_representation` keeps (the hot set of a server)."""
_encoded: dict[int, tuple[Security | Score, str, bytes, str, list[tuple[bytes, bytes]]]] = {}
"""By ``id(record)``: the record itself (held, so that no other object can have its id while
it is here), the Cache-Control value, its JSON, its entity tag and the headers of its 200,
oldest first. One event loop uses it."""


def record_representation(
    if_none_match: str | None, record: Security | Score, cache_control: str
) -> Response:
    """:func:`representation` of a record, tagged with its version.

    The read path hands out the same immutable record object for as long as its entry is
    hot (the near cache holds it; the decoder remembers it by the entry's bytes), so the
    JSON, the tag and the headers are made once per record, not once per request.
    """
    known = _encoded.get(id(record))
    if known is None or known[1] != cache_control:
        if len(_encoded) >= _ENCODED_RECORDS:
            del _encoded[next(iter(_encoded))]
        body = codec.dumps(record)
        etag = version_etag(record.version)
        known = _encoded[id(record)] = (
            record,
            cache_control,
            body,
            etag,
            _headers(etag, cache_control, body),
        )
    _, _, body, etag, headers = known
    return _answer(if_none_match, body, etag, headers.copy())  # each response its own list


@attrs.frozen
class IfMatch:
    """What If-Match allows: any existing version (``*``), or one of some versions.

    Our tags are versions (``"7"``), compared strongly (RFC 9110 13.1.1): a weak tag or any
    other tag can never match, so it only makes the write fail with 412.
    """

    any_version: bool
    versions: frozenset[int]

    def allows(self, version: int) -> bool:
        return self.any_version or version in self.versions


def _if_match(value: str, name: str) -> IfMatch:
    tags = entity_tags(value)
    if tags is None:
        raise ValueError(f'{name} must be "*" or entity tags, as ETag sent them')
    matches = (_VERSION_TAG.fullmatch(t) for t in tags)
    versions = frozenset(int(m.group(1)) for m in matches if m is not None)
    return IfMatch(any_version="*" in tags, versions=versions)


IF_NONE_MATCH: Final = text()
"""Any text: an unreadable condition is no condition."""
IF_MATCH: Final = Kind(
    schema={"type": "string", "pattern": anchored(IF_MATCH_GRAMMAR)}, parse=_if_match
)
