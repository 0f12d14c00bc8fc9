"""The library's text rule and the database's CHECK constraints accept exactly the same text."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securecache.errors import ValidationError
from securecache.models import validate_text
from securecache.ops.migrations import _text_rule

# PostgreSQL text cannot hold NUL at all, so it is left out (the library refuses it too).
TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), min_size=0, max_size=300
) | st.sampled_from(["", " ", "  x ", "\u00a0", "a\nb", "\x7f", "\x85", "x" * 256, "x" * 257])


def python_accepts(value: str) -> bool:
    try:
        validate_text(value, "name")
    except ValidationError:
        return False
    return True


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=TEXT)
def test_python_and_sql_agree_on_every_text(
    admin_conn: psycopg.Connection[Any], value: str
) -> None:
    """For any text, validate_text accepts it exactly when the CHECK constraint would, so a row
    written by another system is always one the library can decode."""
    row = admin_conn.execute(
        f"SELECT {_text_rule('v')} FROM (SELECT %s::text AS v) t", (value,)
    ).fetchone()
    assert row is not None
    assert python_accepts(value) is bool(row[0]), repr(value)


def test_the_constraint_refuses_a_control_character(admin_conn: psycopg.Connection[Any]) -> None:
    """An operator's INSERT of a name with a newline is refused by the database itself."""
    with pytest.raises(psycopg.errors.CheckViolation):
        admin_conn.execute(
            "INSERT INTO securecache.security (id, name, symbol, exchange)"
            " VALUES (%s, %s, 'S', 'X')",
            ("CTRL-1", "a\nb"),
        )
