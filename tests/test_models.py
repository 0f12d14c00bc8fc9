"""The records and their validation rules: I/O-free, property-based at the boundaries."""

from __future__ import annotations

import math
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securecache import Score, ScoreUpdate, Security, ValidationError
from securecache.models import (
    SCORE_FIELDS,
    TEXT_MAX,
    validate_id,
    validate_ids,
    validate_score_value,
    validate_text,
    validate_timestamp,
    validate_version,
)

ID_FIRST = string.ascii_letters + string.digits
ID_REST = ID_FIRST + "._:-"

valid_ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(ID_FIRST),
    st.text(alphabet=ID_REST, max_size=63),
)
valid_scores = st.floats(min_value=0, max_value=10, allow_nan=False, allow_infinity=False)
STAMP = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _security(**changes: Any) -> Security:
    fields: dict[str, Any] = {
        "id": "SEC000001",
        "name": "Acme Corp",
        "symbol": "ACME",
        "exchange": "XNYS",
        "version": 1,
        "updated_at": STAMP,
    }
    fields.update(changes)
    return Security(**fields)


def _score(**changes: Any) -> Score:
    fields: dict[str, Any] = {
        "security_id": "SEC000001",
        "growth": 1.0,
        "value": 2.0,
        "quality": 3.0,
        "momentum": 4.0,
        "version": 1,
        "updated_at": STAMP,
    }
    fields.update(changes)
    return Score(**fields)


@given(valid_ids)
def test_every_well_formed_id_is_accepted(value: str) -> None:
    """Any 1-64 character id of the allowed alphabet starting alphanumeric passes unchanged."""
    assert validate_id(value) == value


@pytest.mark.parametrize("length", [1, 2, 63, 64])
def test_id_length_boundaries_inside(length: int) -> None:
    """Ids of 1 and 64 characters (and their neighbours inside the range) are accepted."""
    assert validate_id("A" * length) == "A" * length


@pytest.mark.parametrize("length", [0, 65, 200])
def test_id_length_boundaries_outside(length: int) -> None:
    """Ids of 0 and 65 (or more) characters are refused."""
    with pytest.raises(ValidationError) as info:
        validate_id("A" * length)
    assert info.value.field == "id"


@given(st.sampled_from("._:-"), st.text(alphabet=ID_REST, max_size=63))
def test_id_must_start_alphanumeric(first: str, rest: str) -> None:
    """An id starting with one of the punctuation characters it may contain is refused."""
    with pytest.raises(ValidationError):
        validate_id(first + rest)


@given(
    valid_ids,
    st.characters(blacklist_characters=ID_REST, blacklist_categories=["Cs"]),
    st.data(),
)
def test_id_with_a_foreign_character_is_refused(base: str, bad: str, data: st.DataObject) -> None:
    """One character outside [A-Za-z0-9._:-] anywhere in an id makes it invalid."""
    position = data.draw(st.integers(min_value=0, max_value=len(base)))
    candidate = (base[:position] + bad + base[position:])[:64]
    if bad not in candidate:  # cut off by the length limit: put it at the front instead
        candidate = bad + base[:63]
    with pytest.raises(ValidationError):
        validate_id(candidate)


@pytest.mark.parametrize("value", [None, 1, 1.5, b"SEC1", ["SEC1"], True])
def test_non_string_ids_are_refused(value: object) -> None:
    """Ids must be str: bytes, numbers, lists and None are refused, not coerced."""
    with pytest.raises(ValidationError):
        validate_id(value)


@pytest.mark.parametrize("value", ["SEC1\n", "SEC1 ", " SEC1", "SÉC1", "SEC1\x00"])
def test_ids_with_trailing_or_odd_characters_are_refused(value: str) -> None:
    """Whitespace, a trailing newline, non-ASCII letters and NUL are all outside the alphabet."""
    with pytest.raises(ValidationError):
        validate_id(value)


def test_validate_ids_names_the_field_and_refuses_a_bare_string() -> None:
    """A batch of ids must be a sequence, not one string (which would iterate characters)."""
    assert validate_ids(["A", "B"]) == ["A", "B"]
    with pytest.raises(ValidationError) as info:
        validate_ids("ABC")
    assert info.value.field == "ids"
    with pytest.raises(ValidationError):
        validate_ids(["A", "bad id"])


ID_LIKE = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}", fullmatch=True),
    st.text(alphabet="AZaz09._:-\n \x00", max_size=70),
    st.integers(),
    st.none(),
)


@given(st.lists(ID_LIKE, max_size=8))
def test_validate_ids_agrees_with_validate_id_on_every_id(values: list[Any]) -> None:
    """A batch passes exactly when each of its ids passes alone (ids holding the newline the
    batch check joins them with included), and the error names the first bad one."""
    first_bad = None
    for value in values:
        try:
            validate_id(value, "ids")
        except ValidationError as exc:
            first_bad = str(exc)
            break
    if first_bad is None:
        assert validate_ids(values) == values
    else:
        with pytest.raises(ValidationError) as info:
            validate_ids(values)
        assert str(info.value) == first_bad


def test_ids_joined_by_newlines_do_not_pass_as_more_ids() -> None:
    """An id holding a newline is refused even though, joined with the others, it reads as
    two well-formed ids."""
    with pytest.raises(ValidationError, match="SEC1"):
        validate_ids(["SEC0", "SEC1\nSEC2"])


@given(valid_scores)
def test_scores_from_zero_to_ten_are_accepted(value: float) -> None:
    """Every finite number in [0, 10] is a valid score value, returned as a float."""
    result = validate_score_value(value, "growth")
    assert result == value
    assert isinstance(result, float)


@pytest.mark.parametrize("value", [0, 0.0, 10, 10.0, 5])
def test_score_boundaries_inside(value: float) -> None:
    """0 and 10 themselves (int or float) are accepted."""
    assert validate_score_value(value, "value") == float(value)


@pytest.mark.parametrize("value", [-0.0001, 10.0001, math.nan, math.inf, -math.inf, -1, 11, 1e308])
def test_score_out_of_range_or_not_finite_is_refused(value: float) -> None:
    """Just below 0, just above 10, NaN and infinities are refused, naming the field."""
    with pytest.raises(ValidationError) as info:
        validate_score_value(value, "quality")
    assert info.value.field == "quality"


@pytest.mark.parametrize("value", [True, False, "5", "5.0", None, [5], b"5"])
def test_score_non_numbers_are_refused(value: object) -> None:
    """Bools, strings, bytes, lists and None are not numbers, even when they look like one."""
    with pytest.raises(ValidationError):
        validate_score_value(value, "momentum")


@given(st.floats().filter(lambda f: not (0 <= f <= 10)))
def test_any_float_outside_the_range_is_refused(value: float) -> None:
    """No float outside [0, 10] (NaN and infinities included) passes validation."""
    with pytest.raises(ValidationError):
        validate_score_value(value, "growth")


def test_text_rules() -> None:
    """Names must be non-blank printable text of at most TEXT_MAX characters."""
    assert validate_text("Acme", "name") == "Acme"
    assert validate_text("x" * TEXT_MAX, "name") == "x" * TEXT_MAX
    for bad in ["", "   ", "x" * (TEXT_MAX + 1), "a\nb", "a\x00b", 5, None]:
        with pytest.raises(ValidationError):
            validate_text(bad, "name")


def test_version_rules() -> None:
    """Versions are ints >= 1; 0, negatives, bools, floats and strings are refused."""
    assert validate_version(1) == 1
    assert validate_version(2**62) == 2**62
    for bad in [0, -1, True, 1.0, "1", None]:
        with pytest.raises(ValidationError):
            validate_version(bad)


def test_timestamps_must_be_aware_and_become_utc() -> None:
    """A naive datetime is refused; an aware one is normalised to UTC, same instant."""
    with pytest.raises(ValidationError):
        validate_timestamp(datetime(2026, 1, 1))
    with pytest.raises(ValidationError):
        validate_timestamp("2026-01-01T00:00:00Z")
    paris = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=1)))
    result = validate_timestamp(paris)
    assert result.tzinfo is UTC
    assert result == paris
    assert result.hour == 11


def test_records_normalise_timestamps_to_utc() -> None:
    """Security and Score store updated_at in UTC whatever offset they were given."""
    offset = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert _security(updated_at=offset).updated_at.tzinfo is UTC
    assert _score(updated_at=offset).updated_at == offset


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("id", ""),
        ("id", "a b"),
        ("name", ""),
        ("symbol", " "),
        ("exchange", "x" * (TEXT_MAX + 1)),
        ("version", 0),
        ("version", True),
        ("updated_at", datetime(2026, 1, 1)),
    ],
)
def test_security_refuses_each_bad_field(field: str, bad: object) -> None:
    """Constructing a Security with any one invalid field raises ValidationError naming it."""
    with pytest.raises(ValidationError) as info:
        _security(**{field: bad})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("security_id", "-x"),
        ("growth", -0.0001),
        ("value", 10.0001),
        ("quality", math.nan),
        ("momentum", math.inf),
        ("growth", True),
        ("value", "5"),
        ("version", -3),
    ],
)
def test_score_refuses_each_bad_field(field: str, bad: object) -> None:
    """Constructing a Score with any one invalid field raises ValidationError naming it."""
    with pytest.raises(ValidationError) as info:
        _score(**{field: bad})
    assert info.value.field == field


def test_records_are_frozen() -> None:
    """Records are immutable: assigning to a field raises."""
    record = _security()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.name = "Other"  # type: ignore[misc]


@given(valid_scores, valid_scores, valid_scores, valid_scores)
def test_score_update_from_mapping_accepts_exact_fields(
    growth: float, value: float, quality: float, momentum: float
) -> None:
    """A mapping with exactly the four fields and valid numbers becomes that ScoreUpdate."""
    update = ScoreUpdate.from_mapping(
        {"growth": growth, "value": value, "quality": quality, "momentum": momentum}
    )
    assert update == ScoreUpdate(growth=growth, value=value, quality=quality, momentum=momentum)


@given(
    st.text(min_size=1, max_size=20).filter(lambda k: k not in SCORE_FIELDS),
    st.one_of(valid_scores, st.text(), st.none()),
)
def test_score_update_from_mapping_refuses_unknown_fields(extra: str, value: object) -> None:
    """Any field beyond the four is refused and named, whatever its value."""
    data: dict[str, object] = dict.fromkeys(SCORE_FIELDS, 5.0)
    data[extra] = value
    with pytest.raises(ValidationError) as info:
        ScoreUpdate.from_mapping(data)
    assert info.value.field == extra
    assert "unknown" in str(info.value)


@pytest.mark.parametrize("missing", SCORE_FIELDS)
def test_score_update_from_mapping_refuses_missing_fields(missing: str) -> None:
    """Leaving out any one of the four fields is refused, naming the missing field."""
    data = {f: 5.0 for f in SCORE_FIELDS if f != missing}
    with pytest.raises(ValidationError) as info:
        ScoreUpdate.from_mapping(data)
    assert info.value.field == missing
    assert "missing" in str(info.value)


@pytest.mark.parametrize("bad", [None, [], "growth", 5, [("growth", 1)]])
def test_score_update_from_mapping_refuses_non_objects(bad: object) -> None:
    """Only a dict is a score update body: lists, strings, numbers and None are refused."""
    with pytest.raises(ValidationError):
        ScoreUpdate.from_mapping(bad)


@pytest.mark.parametrize("bad", [True, "5", None, math.nan, -0.0001, 10.0001, math.inf])
@pytest.mark.parametrize("field", SCORE_FIELDS)
def test_score_update_from_mapping_refuses_bad_values(field: str, bad: object) -> None:
    """A bad value in any field of an untrusted mapping is refused and names that field."""
    data: dict[str, object] = dict.fromkeys(SCORE_FIELDS, 5.0)
    data[field] = bad
    with pytest.raises(ValidationError) as info:
        ScoreUpdate.from_mapping(data)
    assert info.value.field == field


@pytest.mark.parametrize("bad", [True, "5", math.nan, 11])
def test_score_update_constructor_validates(bad: object) -> None:
    """ScoreUpdate(...) validates too, so bools and text never become floats."""
    with pytest.raises(ValidationError):
        ScoreUpdate(growth=bad, value=1, quality=1, momentum=1)  # type: ignore[arg-type]


def test_score_update_converts_ints_to_floats() -> None:
    """Integer inputs are stored as floats, so equal updates compare and hash equal."""
    update = ScoreUpdate(growth=1, value=2, quality=3, momentum=10)
    assert isinstance(update.growth, float)
    assert update == ScoreUpdate(growth=1.0, value=2.0, quality=3.0, momentum=10.0)


def test_validation_error_is_a_value_error() -> None:
    """ValidationError also subclasses ValueError, so generic handlers catch it."""
    with pytest.raises(ValueError, match="id must be"):
        validate_id("")
