"""The CSV loader: all rows checked first, every bad line named, nothing written unless all good."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fix_servers import Database
from securecache.errors import ValidationError
from securecache.ops.loader import CsvError, LoadSummary, load_securities, read_securities

Conn = psycopg.Connection[tuple[Any, ...]]
HEADER = "id,name,symbol,exchange\n"


@pytest.fixture
def tag() -> str:
    """An id prefix of this test, so tests sharing the session database never collide."""
    return "L" + secrets.token_hex(3)


def write(tmp_path: Path, text: str, name: str = "securities.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def table(conn: Conn) -> list[tuple[Any, ...]]:
    """Every row of both tables, versions and timestamps included."""
    return [
        *conn.execute("SELECT * FROM securecache.security ORDER BY id").fetchall(),
        *conn.execute("SELECT * FROM securecache.score ORDER BY security_id").fetchall(),
    ]


def rows_of(conn: Conn, tag: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, name, symbol, exchange, version FROM securecache.security "
        "WHERE id LIKE %s ORDER BY id",
        (tag + "%",),
    ).fetchall()


def test_a_good_file_loads_and_loading_it_again_changes_nothing(
    database: Database, admin_conn: Conn, tmp_path: Path, tag: str
) -> None:
    """Three new rows are inserted at version 1; the same file again leaves them untouched."""
    path = write(
        tmp_path,
        HEADER + f"{tag}-1,Alpha Inc.,ALP,XNYS\n"
        f'{tag}-2,"Beta, Gamma & Co",BGC,XLON\n'
        f"{tag}-3,Delta SA,DEL,XPAR\n",
    )
    assert load_securities(database.admin_url, path) == LoadSummary(
        read=3, inserted=3, updated=0, unchanged=0
    )
    assert rows_of(admin_conn, tag) == [
        (f"{tag}-1", "Alpha Inc.", "ALP", "XNYS", 1),
        (f"{tag}-2", "Beta, Gamma & Co", "BGC", "XLON", 1),
        (f"{tag}-3", "Delta SA", "DEL", "XPAR", 1),
    ]
    before = table(admin_conn)
    assert load_securities(database.admin_url, path) == LoadSummary(
        read=3, inserted=0, updated=0, unchanged=3
    )
    assert table(admin_conn) == before  # versions and updated_at included


def test_changed_rows_are_updated_and_new_ones_inserted(
    database: Database, admin_conn: Conn, tmp_path: Path, tag: str
) -> None:
    """A re-load with one changed and one new row bumps only the changed row's version."""
    load_securities(
        database.admin_url,
        write(tmp_path, HEADER + f"{tag}-1,Alpha,ALP,XNYS\n{tag}-2,Beta,BET,XNYS\n"),
    )
    summary = load_securities(
        database.admin_url,
        write(
            tmp_path,
            HEADER + f"{tag}-1,Alpha,ALP,XNYS\n{tag}-2,Beta Renamed,BET,XNYS\n{tag}-3,C,C,XETR\n",
        ),
    )
    assert summary == LoadSummary(read=3, inserted=1, updated=1, unchanged=1)
    assert [(row[0], row[-1]) for row in rows_of(admin_conn, tag)] == [
        (f"{tag}-1", 1),
        (f"{tag}-2", 2),
        (f"{tag}-3", 1),
    ]


def test_a_file_with_bad_lines_names_each_and_writes_nothing(
    database: Database, admin_conn: Conn, tmp_path: Path, tag: str
) -> None:
    """Every bad line is reported with its number and reason; the database stays as it was."""
    path = write(
        tmp_path,
        HEADER
        + f"{tag}-1,Good One,GO1,XNYS\n"  # line 2
        + "-bad-id,Bad Id,BAD,XNYS\n"  # line 3: id must start with a letter or digit
        + f"{tag}-2,Good Two,GO2,XNYS\n"  # line 4
        + f"{tag}-3,   ,BLANK,XNYS\n"  # line 5: blank name
        + f"{tag}-4,Too,Many,XNYS,fields\n"  # line 6: five fields
        + "\n"  # line 7: blank lines are skipped
        + f'{tag}-5,"Two\nLines",TWO,XNYS\n'  # line 8 (spans 9): newline in a name
        + f"{tag}-6,No Exchange,NOX,\n"  # line 10: empty exchange
        + f"{tag}-{'x' * 70},Long Id,LNG,XNYS\n",  # line 11: id too long
    )
    before = table(admin_conn)
    with pytest.raises(CsvError) as caught:
        load_securities(database.admin_url, path)
    assert [line for line, _ in caught.value.problems] == [3, 5, 6, 8, 10, 11]
    reasons = dict(caught.value.problems)
    assert "id must be" in reasons[3]
    assert "name" in reasons[5]
    assert "expected 4 fields, found 5" in reasons[6]
    assert "name" in reasons[8]
    assert "exchange" in reasons[10]
    message = str(caught.value)
    for line in (3, 5, 6, 8, 10, 11):
        assert f"line {line}:" in message
    assert isinstance(caught.value, ValidationError)
    assert table(admin_conn) == before


def test_duplicate_ids_in_a_file_are_rejected(
    database: Database, admin_conn: Conn, tmp_path: Path, tag: str
) -> None:
    """An id twice in one file is an error at the second line, naming the first."""
    path = write(
        tmp_path,
        HEADER + f"{tag}-1,One,ONE,XNYS\n{tag}-2,Two,TWO,XNYS\n{tag}-1,Uno,UNO,XPAR\n",
    )
    before = table(admin_conn)
    with pytest.raises(CsvError) as caught:
        load_securities(database.admin_url, path)
    assert caught.value.problems == [(4, f"duplicate id '{tag}-1' (first on line 2)")]
    assert table(admin_conn) == before


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("id,name,symbol\n", "missing column(s) exchange"),
        ("id,name,symbol,exchange,isin\n", "unexpected column(s) 'isin'"),
        ("id,name,name,symbol,exchange\n", "repeated column(s) name"),
        ("ID,Name,Symbol,Exchange\n", "missing column(s) id, name, symbol, exchange"),
    ],
    ids=["missing", "extra", "repeated", "wrong-case"],
)
def test_a_wrong_header_rejects_the_file(
    database: Database, admin_conn: Conn, tmp_path: Path, header: str, reason: str
) -> None:
    """Missing, extra or repeated columns: the whole file is refused at line 1."""
    path = write(tmp_path, header + f"H{secrets.token_hex(3)},One,ONE,XNYS\n")
    before = table(admin_conn)
    with pytest.raises(CsvError) as caught:
        load_securities(database.admin_url, path)
    [(line, message)] = caught.value.problems
    assert line == 1
    assert reason in message
    assert table(admin_conn) == before


def test_columns_may_come_in_any_order(tmp_path: Path) -> None:
    """The header maps columns by name, not position."""
    path = write(tmp_path, "exchange,symbol,id,name\nXNYS,ALP,A1,Alpha\n")
    assert read_securities(path) == [("A1", "Alpha", "ALP", "XNYS")]


def test_windows_files_with_bom_and_crlf_are_read(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line ends (spreadsheet exports) are accepted."""
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,name,symbol,exchange\r\nA1,Zoë AG,ZOE,XETR\r\n".encode())
    assert read_securities(path) == [("A1", "Zoë AG", "ZOE", "XETR")]


def test_an_empty_file_or_bad_encoding_is_a_clear_error(tmp_path: Path) -> None:
    """No header at all, or bytes that are not UTF-8, are reported with a line number."""
    with pytest.raises(CsvError, match="line 1: empty file"):
        read_securities(write(tmp_path, ""))
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(HEADER.encode() + b"A1,Caf\xe9,CAF,XPAR\n")
    with pytest.raises(CsvError, match="line 2: not UTF-8"):
        read_securities(latin1)


def test_a_header_only_file_loads_nothing(database: Database, tmp_path: Path) -> None:
    """An empty (but well-formed) file is a successful no-op."""
    assert load_securities(database.admin_url, write(tmp_path, HEADER)) == LoadSummary(
        read=0, inserted=0, updated=0, unchanged=0
    )


def test_batches_report_progress_and_commit_together(
    database: Database, admin_conn: Conn, tmp_path: Path, tag: str
) -> None:
    """Progress is reported per batch; a failure after a batch leaves nothing committed."""
    path = write(tmp_path, HEADER + "".join(f"{tag}-{i},N{i},S{i},XNYS\n" for i in range(5)))
    before = table(admin_conn)
    calls: list[tuple[int, int]] = []

    def fail_after_first_batch(done: int, total: int) -> None:
        calls.append((done, total))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        load_securities(database.admin_url, path, batch_size=2, progress=fail_after_first_batch)
    assert calls == [(2, 5)]
    assert table(admin_conn) == before  # the first batch was rolled back

    calls.clear()
    summary = load_securities(
        database.admin_url, path, batch_size=2, progress=lambda *c: calls.append(c)
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert summary.inserted == 5


def test_service_roles_cannot_load(database: Database, tmp_path: Path, tag: str) -> None:
    """Loading needs the administrator: the writer's URL is refused by PostgreSQL."""
    path = write(tmp_path, HEADER + f"{tag}-1,One,ONE,XNYS\n")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        load_securities(database.writer_url, path)
