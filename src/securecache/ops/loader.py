"""Load securities from a CSV file into PostgreSQL, all or nothing.

A reference-data load is only useful whole: half a file applied is a state nobody asked for.
So every row is checked first, with the same rules as the library (:mod:`securecache.models`),
and one bad row rejects the file with every problem listed by line number. A good file is
upserted in batches inside one transaction. The database's trigger keeps ``version`` and
``updated_at``; rows whose data did not change are not touched, so re-loading a file changes
nothing and wakes no cache.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import attrs
import psycopg

from securecache.errors import ValidationError
from securecache.models import validate_id, validate_text

COLUMNS: Final = ("id", "name", "symbol", "exchange")
MAX_PROBLEMS_SHOWN: Final = 10
"""How many problems the error message spells out (``.problems`` always has them all)."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(rows_written, rows_total)`` after each batch."""


class CsvError(ValidationError):
    """The file was rejected and nothing was written; ``problems`` lists ``(line, reason)``."""

    def __init__(self, path: str | Path, problems: Sequence[tuple[int, str]]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        shown = "; ".join(
            f"line {line}: {reason}" for line, reason in problems[:MAX_PROBLEMS_SHOWN]
        )
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        if more > 0:
            shown += f"; and {more} more"
        count = len(self.problems)
        super().__init__(f"{self.path}: {count} problem{'s' if count != 1 else ''}: {shown}")


@attrs.frozen
class LoadSummary:
    """What a load did, row by row."""

    read: int
    inserted: int
    updated: int
    unchanged: int

    def __str__(self) -> str:
        return (
            f"{self.read} rows read: {self.inserted} inserted, {self.updated} updated, "
            f"{self.unchanged} unchanged"
        )


Row = tuple[str, str, str, str]

# Shared with the demo-data seeder: one statement owns how securities are upserted.
UPSERT_SECURITIES: Final = """
INSERT INTO securecache.security AS s (id, name, symbol, exchange)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[])
ON CONFLICT (id) DO UPDATE
    SET name = EXCLUDED.name, symbol = EXCLUDED.symbol, exchange = EXCLUDED.exchange
    WHERE (s.name, s.symbol, s.exchange)
          IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.symbol, EXCLUDED.exchange)
RETURNING s.version
"""
# The trigger sets version 1 on insert and bumps it on a real change, so the returned
# version tells inserts from updates; rows the WHERE skipped return nothing: unchanged.


def read_securities(path: str | Path) -> list[Row]:
    """Parse and validate the whole file; raise :class:`CsvError` listing every bad line."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(path, [(data.count(b"\n", 0, exc.start) + 1, "not UTF-8 text")]) from None
    problems: list[tuple[int, str]] = []
    rows = _parse(io.StringIO(text, newline=""), problems)
    if problems:
        raise CsvError(path, sorted(problems))
    return rows


def _parse(file: Iterable[str], problems: list[tuple[int, str]]) -> list[Row]:
    reader = csv.reader(file, strict=True)
    rows: list[Row] = []
    first_seen: dict[str, int] = {}
    order: dict[str, int] | None = None
    try:
        while True:
            line = reader.line_num + 1  # where the next record starts (fields may span lines)
            fields = next(reader, None)
            if fields is None:
                break
            if not fields:
                continue  # a blank line
            if order is None:
                order = _check_header(line, fields, problems)
                if order is None:
                    return []
                continue
            row = _check_row(line, fields, order, problems)
            if row is None:
                continue
            if (first := first_seen.setdefault(row[0], line)) != line:
                problems.append((line, f"duplicate id {row[0]!r} (first on line {first})"))
                continue
            rows.append(row)
    except csv.Error as exc:
        problems.append((reader.line_num, f"malformed CSV: {exc}"))
    if order is None and not problems:
        problems.append((1, f"empty file: expected the header {','.join(COLUMNS)}"))
    return rows


def _check_row(
    line: int, fields: list[str], order: dict[str, int], problems: list[tuple[int, str]]
) -> Row | None:
    if len(fields) != len(COLUMNS):
        problems.append((line, f"expected {len(COLUMNS)} fields, found {len(fields)}"))
        return None
    values = {column: fields[index] for column, index in order.items()}
    try:
        return (
            validate_id(values["id"]),
            validate_text(values["name"], "name"),
            validate_text(values["symbol"], "symbol"),
            validate_text(values["exchange"], "exchange"),
        )
    except ValidationError as exc:
        problems.append((line, str(exc)))
        return None


def _check_header(
    line: int, header: list[str], problems: list[tuple[int, str]]
) -> dict[str, int] | None:
    """Column name -> position, or None (with the reason recorded) for a wrong header."""
    names = [name.strip() for name in header]
    missing = [c for c in COLUMNS if c not in names]
    extra = [n for n in names if n not in COLUMNS]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not (missing or extra or repeated):
        return {column: names.index(column) for column in COLUMNS}
    reasons = []
    if missing:
        reasons.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        reasons.append(f"unexpected column(s) {', '.join(repr(n) for n in extra)}")
    if repeated:
        reasons.append(f"repeated column(s) {', '.join(repeated)}")
    problems.append((line, f"bad header ({'; '.join(reasons)}): expected {','.join(COLUMNS)}"))
    return None


def load_securities(
    admin_url: str,
    path: str | Path,
    *,
    batch_size: int = 1000,
    progress: ProgressCallback | None = None,
) -> LoadSummary:
    """Validate ``path`` entirely, then upsert it in one transaction; see the module docstring.

    ``admin_url`` must be allowed to write ``securecache.security`` (the owner, or a
    superuser): the service roles deliberately cannot.
    """
    if batch_size < 1:
        raise ValidationError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    rows = read_securities(path)
    inserted = updated = 0
    with psycopg.connect(admin_url, autocommit=True) as conn, conn.transaction():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            columns = [list(column) for column in zip(*batch, strict=True)]
            versions = conn.execute(UPSERT_SECURITIES, columns).fetchall()
            fresh = sum(1 for (version,) in versions if version == 1)
            inserted += fresh
            updated += len(versions) - fresh
            if progress is not None:
                progress(start + len(batch), len(rows))
    return LoadSummary(
        read=len(rows),
        inserted=inserted,
        updated=updated,
        unchanged=len(rows) - inserted - updated,
    )
