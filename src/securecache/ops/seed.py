"""Plausible demo data: securities ``SEC000001``... and their scores.

Each row is derived from ``(rng_seed, its number)`` alone, so seeding is idempotent: the same
count writes the same rows (a second run changes nothing, versions stay put), and a larger
count keeps the first rows and adds more. Written through plain SQL as an administrator,
the way an outside pipeline would, so the triggers do their usual work.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

import attrs
import psycopg

from securecache.errors import ValidationError
from securecache.ops.loader import UPSERT_SECURITIES

EXCHANGES: Final = ("XNYS", "XNAS", "XLON", "XPAR", "XETR", "XTKS")
DEFAULT_RNG_SEED: Final = 20240101
MAX_COUNT: Final = 999_999
"""Ids have six digits."""

_FIRST: Final = (
    "Atlas", "Boreal", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor", "Iris",
    "Juniper", "Kestrel", "Lumen", "Meridian", "Northwind", "Onyx", "Pioneer", "Quartz",
    "Redwood", "Summit", "Tidal", "Union", "Vertex", "Willow", "Zenith",
)  # fmt: skip
_SECOND: Final = (
    "Analytics", "Bank", "Biotech", "Capital", "Chemicals", "Energy", "Foods", "Freight",
    "Health", "Industries", "Insurance", "Logistics", "Materials", "Media", "Mining",
    "Motors", "Pharma", "Power", "Retail", "Robotics", "Semiconductors", "Software",
    "Steel", "Telecom", "Utilities",
)  # fmt: skip
_SUFFIX: Final = {
    "XNYS": ("Inc.", "Corp."),
    "XNAS": ("Inc.", "Corp."),
    "XLON": ("plc", "Group plc"),
    "XPAR": ("SA", "Group SA"),
    "XETR": ("AG", "SE"),
    "XTKS": ("K.K.", "Holdings K.K."),
}


@attrs.frozen
class SeedSummary:
    """Rows written by :func:`seed`, per table."""

    securities_inserted: int
    securities_updated: int
    securities_unchanged: int
    scores_inserted: int
    scores_updated: int
    scores_unchanged: int

    def __str__(self) -> str:
        return (
            f"securities: {self.securities_inserted} inserted, {self.securities_updated} "
            f"updated, {self.securities_unchanged} unchanged; scores: {self.scores_inserted} "
            f"inserted, {self.scores_updated} updated, {self.scores_unchanged} unchanged"
        )


def security_id(number: int) -> str:
    return f"SEC{number:06d}"


def demo_security(number: int, rng_seed: int = DEFAULT_RNG_SEED) -> tuple[str, str, str, str]:
    """``(id, name, symbol, exchange)`` of demo security ``number``."""
    rng = random.Random(f"{rng_seed}:security:{number}")
    first, second = rng.choice(_FIRST), rng.choice(_SECOND)
    exchange = rng.choice(EXCHANGES)
    name = f"{first} {second} {rng.choice(_SUFFIX[exchange])}"
    if exchange == "XTKS":
        symbol = str(1300 + number % 8700)  # Tokyo tickers are four digits
    else:
        symbol = (first[:2] + second[0] + rng.choice("ABCDEFGHKLMNPRSTWXZ")).upper()
    return security_id(number), name, symbol, exchange


def demo_score(number: int, rng_seed: int = DEFAULT_RNG_SEED) -> tuple[float, ...]:
    """``(growth, value, quality, momentum)`` of demo security ``number``: 0-10, 2 decimals."""
    rng = random.Random(f"{rng_seed}:score:{number}")
    return tuple(round(min(10.0, max(0.0, rng.gauss(5.5, 2.0))), 2) for _ in range(4))


_SCORES: Final = """
INSERT INTO securecache.score AS s (security_id, growth, value, quality, momentum)
SELECT * FROM unnest(%s::text[], %s::float8[], %s::float8[], %s::float8[], %s::float8[])
ON CONFLICT (security_id) DO UPDATE
    SET growth = EXCLUDED.growth, value = EXCLUDED.value,
        quality = EXCLUDED.quality, momentum = EXCLUDED.momentum
    WHERE (s.growth, s.value, s.quality, s.momentum)
          IS DISTINCT FROM (EXCLUDED.growth, EXCLUDED.value, EXCLUDED.quality, EXCLUDED.momentum)
RETURNING s.version
"""
_BATCH: Final = 5000


def seed(
    admin_url: str,
    count: int,
    *,
    with_scores: bool = True,
    rng_seed: int = DEFAULT_RNG_SEED,
) -> SeedSummary:
    """Upsert demo securities 1..``count`` (and their scores) in one transaction."""
    if not 0 <= count <= MAX_COUNT:
        raise ValidationError(f"count must be from 0 to {MAX_COUNT}, got {count}", field="count")
    numbers = range(1, count + 1)
    securities = [demo_security(n, rng_seed) for n in numbers]
    scores = [(security_id(n), *demo_score(n, rng_seed)) for n in numbers] if with_scores else []
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction():
        sec = _upsert(conn, UPSERT_SECURITIES, securities)
        sco = _upsert(conn, _SCORES, scores)
    return SeedSummary(
        securities_inserted=sec[0],
        securities_updated=sec[1],
        securities_unchanged=len(securities) - sec[0] - sec[1],
        scores_inserted=sco[0],
        scores_updated=sco[1],
        scores_unchanged=len(scores) - sco[0] - sco[1],
    )


def _upsert(
    conn: psycopg.Connection[tuple[object, ...]], query: str, rows: Sequence[tuple[object, ...]]
) -> tuple[int, int]:
    """Run ``query`` over ``rows`` in batches; (inserted, updated) from the returned versions."""
    inserted = updated = 0
    for start in range(0, len(rows), _BATCH):
        columns = [list(column) for column in zip(*rows[start : start + _BATCH], strict=True)]
        versions = conn.execute(query, columns).fetchall()
        fresh = sum(1 for (version,) in versions if version == 1)
        inserted += fresh
        updated += len(versions) - fresh
    return inserted, updated
