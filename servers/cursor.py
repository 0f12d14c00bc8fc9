"""The listing's cursor, as a parameter kind whose pattern is exactly the cursors issued.

A cursor is opaque to clients: ``securecache.client.encode_cursor`` writes the last id of a
page as unpadded base64url. For the OpenAPI document to match the server exactly (so that a
client, or schemathesis, can tell a cursor the server takes from one it refuses without
knowing the encoding), the document's pattern is the regular expression of that set: the
canonical base64url images of every string ``ID_PATTERN`` accepts. The server checks the same
expression before the library decodes the cursor, so an empty cursor, or one this API never
issued, is a 422 named ``cursor``; leave the parameter out for the first page.

Base64 turns each 3 bytes into 4 characters of 6 bits: a character's bits come from at most
two adjacent bytes, so each byte's rule constrains only neighbouring characters, and the set
is written one 4-character group at a time. The id rules are read off ``ID_PATTERN`` itself
(which characters may start an id, which may follow, how long it may be): stated once there.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Set
from typing import Final

from securecache.models import ID_PATTERN
from servers.params import Kind
from servers.schemas import anchored

ALPHABET: Final = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
"""base64url's 64 characters, by 6-bit value."""
_ASCII: Final = range(128)
_LONGEST_PROBE: Final = 1024


def _char_class(values: Iterable[int]) -> str:
    """A regex character class for some 6-bit values, as ranges of code points."""
    chars = sorted({ALPHABET[v] for v in values}, key=ord)
    escaped = {c: "\\-" if c == "-" else c for c in chars}
    if len(chars) == 1:
        return chars[0]  # none of base64url's characters is special outside a class
    runs: list[str] = []
    start = 0
    while start < len(chars):
        end = start
        while end + 1 < len(chars) and ord(chars[end + 1]) == ord(chars[end]) + 1:
            end += 1
        if end - start >= 2:
            runs.append(f"{escaped[chars[start]]}-{escaped[chars[end]]}")
        else:
            runs.extend(escaped[c] for c in chars[start : end + 1])
        start = end + 1
    return "[" + "".join(runs) + "]"


def _either(options: Iterable[str]) -> str:
    unique = list(dict.fromkeys(options))
    return unique[0] if len(unique) == 1 else "(?:" + "|".join(unique) + ")"


def _group(first: Set[int], rest: Set[int]) -> str:
    """4 characters for 3 bytes b1 b2 b3 (b1 in ``first``, b2 and b3 in ``rest``):
    c1 = b1 >> 2, c2 = (b1 & 3) << 4 | b2 >> 4, c3 = (b2 & 15) << 2 | b3 >> 6, c4 = b3 & 63."""
    merged: dict[tuple[str, str], set[int]] = {}
    for b1_low in range(4):
        c1 = {b >> 2 for b in first if b & 3 == b1_low}
        for b2_high in range(16) if c1 else ():
            options = []
            for b3_high in range(4):
                c3 = {c for c in range(64) if c & 3 == b3_high and (b2_high << 4 | c >> 2) in rest}
                c4 = {c for c in range(64) if (b3_high << 6 | c) in rest}
                if c3 and c4:
                    options.append(_char_class(c3) + _char_class(c4))
            if options:
                key = (_char_class(c1), _either(options))
                merged.setdefault(key, set()).add(b1_low << 4 | b2_high)
    return _either(c1 + _char_class(c2) + after for (c1, after), c2 in merged.items())


def _one_byte(first: Set[int]) -> str:
    """2 characters for a last lone byte (the low 4 bits of c2 are zero: canonical)."""
    return _either(
        _char_class({b >> 2 for b in first if b & 3 == low}) + _char_class({low << 4})
        for low in range(4)
        if any(b & 3 == low for b in first)
    )


def _two_bytes(first: Set[int], rest: Set[int]) -> str:
    """3 characters for a last pair of bytes (the low 2 bits of c3 are zero: canonical)."""
    merged: dict[tuple[str, str], set[int]] = {}
    for b1_low in range(4):
        c1 = {b >> 2 for b in first if b & 3 == b1_low}
        for b2_high in range(16) if c1 else ():
            c3 = {(b & 15) << 2 for b in rest if b >> 4 == b2_high}
            if c3:
                key = (_char_class(c1), _char_class(c3))
                merged.setdefault(key, set()).add(b1_low << 4 | b2_high)
    return _either(c1 + _char_class(c2) + c3 for (c1, c3), c2 in merged.items())


def base64url_language(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """The unpadded, canonical base64url images of the ASCII strings ``pattern`` accepts,
    for a pattern of the shape "one of some characters, then up to N-1 of some others"."""
    first = frozenset(b for b in _ASCII if pattern.fullmatch(chr(b)))
    start = chr(min(first))
    rest = frozenset(b for b in _ASCII if pattern.fullmatch(start + chr(b)))
    longest = max(n for n in range(1, _LONGEST_PROBE) if pattern.fullmatch(start * n))
    tails = {1: _one_byte(rest), 2: _two_bytes(rest, rest)}
    # After the first group, q - 1 more groups and a tail of r bytes, 3q + r <= longest;
    # group the q by which tails they allow.
    by_tails: dict[tuple[int, ...], list[int]] = {}
    for q in range(1, longest // 3 + 1):
        allowed = tuple(r for r in (0, 1, 2) if 3 * q + r <= longest)
        by_tails.setdefault(allowed, []).append(q - 1)
    group = _group(rest, rest)
    after_first = []
    for allowed, more in by_tails.items():
        low, high = min(more), max(more)
        count = f"{{{low}}}" if low == high else f"{{{low},{high}}}"
        groups = f"(?:{group}){count}" if high else ""
        ends = [tails[r] for r in allowed if r]
        tail = _either(ends) + ("?" if 0 in allowed else "") if ends else ""
        after_first.append(groups + tail)
    return re.compile(
        _either(
            [_one_byte(first), _two_bytes(first, rest), _group(first, rest) + _either(after_first)]
        )
    )


CURSOR_LANGUAGE: Final = base64url_language(ID_PATTERN)
"""Every cursor ``securecache.client.encode_cursor`` can issue, and nothing else."""


def _cursor(value: str, name: str) -> str:
    if CURSOR_LANGUAGE.fullmatch(value) is None:
        raise ValueError(f"{name} is not one this API returned, got {value!r:.40}")
    return value


CURSOR: Final = Kind(schema={"type": "string", "pattern": anchored(CURSOR_LANGUAGE)}, parse=_cursor)
