"""The records securecache serves, and the rules their fields obey.

I/O-free on purpose: the same validation guards the library API, the HTTP edges, the CSV
loader and values read back from Redis (which are treated as untrusted input).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

import attrs

from securecache.errors import ValidationError

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
"""Ids: 1 to 64 characters of ``[A-Za-z0-9._:-]``, starting with a letter or digit."""

SCORE_MIN: Final = 0.0
SCORE_MAX: Final = 10.0
SCORE_FIELDS: Final = ("growth", "value", "quality", "momentum")
CONTROL_CHARACTERS: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
"""Unicode category Cc: refused in names, symbols and exchanges (here and in SQL)."""
TEXT_MAX: Final = 256
"""Longest name, symbol or exchange accepted (keeps cache entries and pages bounded)."""
MAX_PAGE: Final = 500
"""Most securities one listing page holds (``limit`` runs from 1 to this)."""
MAX_BATCH: Final = 500
"""Most records one batch call reads or writes (bounds one query, one lookup, one
transaction)."""


_IDS_PATTERN: Final = re.compile(f"(?:{ID_PATTERN.pattern}\n)*{ID_PATTERN.pattern}")
"""Ids joined by newlines (see validate_ids)."""


def validate_id(value: object, field: str = "id") -> str:
    """Return ``value`` if it is a well-formed id, else raise :class:`ValidationError`."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise ValidationError(
            f"{field} must be 1-64 characters of [A-Za-z0-9._:-] starting with a letter or "
            f"digit, got {value!r:.80}",
            field=field,
        )
    return value


def validate_ids(values: object, field: str = "ids") -> list[str]:
    """Validate every id of a batch; the error names the first bad one."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValidationError(
            f"{field} must be an iterable of ids, not {type(values).__name__}", field=field
        )
    ids = list(values)
    try:
        # One match over the ids joined by a character no id may hold, and a count of
        # those characters (an id holding one would otherwise pass as two): several times
        # faster than a match per id, for batches of hundreds.
        joined = "\n".join(ids)
        if _IDS_PATTERN.fullmatch(joined) is not None and joined.count("\n") == len(ids) - 1:
            return ids
    except TypeError:  # not all strings
        pass
    for value in ids:
        validate_id(value, field)  # raises at the first bad one
    return ids


def validate_score_value(value: object, field: str) -> float:
    """A score field: a finite real number from 0 to 10 inclusive (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{field} must be a number, got {type(value).__name__}", field=field)
    number = float(value)
    if not math.isfinite(number) or not SCORE_MIN <= number <= SCORE_MAX:
        raise ValidationError(
            f"{field} must be a finite number from 0 to 10, got {value!r}", field=field
        )
    return number


def validate_text(value: object, field: str) -> str:
    """A name, symbol or exchange: 1 to 256 characters, not only spaces, no control characters.

    The same rule as the database's CHECK constraints, to the character: a row written by
    any other system is then always one the library can serve.
    """
    if not isinstance(value, str) or not value.strip(" "):
        raise ValidationError(f"{field} must be non-empty text", field=field)
    if len(value) > TEXT_MAX or CONTROL_CHARACTERS.search(value):
        raise ValidationError(
            f"{field} must be at most {TEXT_MAX} characters, with no control characters",
            field=field,
        )
    return value


def validate_version(value: object, field: str = "version") -> int:
    """Row versions start at 1 (the trigger sets them) and only grow."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{field} must be an integer >= 1, got {value!r}", field=field)
    return value


def validate_timestamp(value: object, field: str = "updated_at") -> datetime:
    """Timestamps are timezone-aware and normalised to UTC."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError(f"{field} must be a timezone-aware datetime", field=field)
    return value.astimezone(UTC)


def _check(validator: Any) -> Any:
    """Adapt a ``validate_*`` function to an attrs validator."""

    def run(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        validator(value, attribute.name)

    return run


def _utc(value: Any) -> Any:
    """Normalise aware datetimes to UTC; anything else is left for the validator to refuse."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


@attrs.frozen
class Security:
    """An instrument: the reference record many services share."""

    id: str = attrs.field(validator=_check(validate_id))
    name: str = attrs.field(validator=_check(validate_text))
    symbol: str = attrs.field(validator=_check(validate_text))
    exchange: str = attrs.field(validator=_check(validate_text))
    version: int = attrs.field(validator=_check(validate_version))
    updated_at: datetime = attrs.field(converter=_utc, validator=_check(validate_timestamp))


@attrs.frozen
class Score:
    """The scores of one security (one score per security)."""

    security_id: str = attrs.field(validator=_check(validate_id))
    growth: float = attrs.field(validator=_check(validate_score_value))
    value: float = attrs.field(validator=_check(validate_score_value))
    quality: float = attrs.field(validator=_check(validate_score_value))
    momentum: float = attrs.field(validator=_check(validate_score_value))
    version: int = attrs.field(validator=_check(validate_version))
    updated_at: datetime = attrs.field(converter=_utc, validator=_check(validate_timestamp))


def _score(field: str) -> Any:
    """A converter that validates first, so bools, text and NaN never become floats."""
    return attrs.field(converter=lambda v: validate_score_value(v, field))


@attrs.frozen
class ScoreUpdate:
    """The values a writer sets; the database assigns version and timestamp."""

    growth: float = _score("growth")
    value: float = _score("value")
    quality: float = _score("quality")
    momentum: float = _score("momentum")

    @classmethod
    def from_mapping(cls, data: object) -> ScoreUpdate:
        """Build from untrusted input (an HTTP body, a CSV row): exact fields, numbers only."""
        if not isinstance(data, dict):
            raise ValidationError(
                "a score update must be an object with growth, value, quality and momentum"
            )
        unknown = sorted(set(data) - set(SCORE_FIELDS))
        if unknown:
            raise ValidationError(
                f"unknown field(s): {', '.join(map(str, unknown))}", field=str(unknown[0])
            )
        missing = [f for f in SCORE_FIELDS if f not in data]
        if missing:
            raise ValidationError(f"missing field(s): {', '.join(missing)}", field=missing[0])
        return cls(**{f: validate_score_value(data[f], f) for f in SCORE_FIELDS})


T = TypeVar("T")


@attrs.frozen
class Page(Generic[T]):
    """One page of a keyset-paginated listing; ``next_cursor`` is None on the last page."""

    items: Sequence[T]
    next_cursor: str | None


@attrs.frozen
class ScoreWrite:
    """A committed score write: the row as stored, and whether it was created."""

    score: Score
    created: bool


@attrs.frozen
class Health:
    """Readiness: serving needs PostgreSQL; Redis only makes it faster."""

    database: bool
    redis: str
    """"ok", "degraded" (down, or catching up after an outage) or "disabled"."""

    @property
    def ready(self) -> bool:
        return self.database
