"""The documents state the data model's limits, and the declarations enforce what they state
(no server needed: the documents, the parsers and the converter are I/O-free)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import Response

from securecache.client import decode_cursor, encode_cursor
from securecache.models import (
    ID_PATTERN,
    MAX_BATCH,
    MAX_PAGE,
    SCORE_FIELDS,
    SCORE_MAX,
    SCORE_MIN,
    TEXT_MAX,
)
from servers import internal_api, public_api
from servers.cursor import ALPHABET, CURSOR_LANGUAGE
from servers.params import IDENTIFIER, PathParam, structure
from servers.problems import Problem
from servers.routes import declare
from servers.schemas import anchored

PUBLIC: dict[str, Any] = public_api.OPENAPI
INTERNAL: dict[str, Any] = internal_api.OPENAPI


def parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    params = document["paths"][path][method]["parameters"]
    found: dict[str, Any] = next(p for p in params if p["name"] == name)
    return found


def test_documented_limits_are_the_models_constants() -> None:
    """Page size, batch sizes, the id pattern, score bounds and text length in both
    documents are securecache.models' constants."""
    limit = parameter(PUBLIC, "/securities", "get", "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, MAX_PAGE)
    assert limit["default"] == public_api.DEFAULT_LIMIT
    ids = parameter(INTERNAL, "/scores", "get", "ids")["schema"]
    assert (ids["minItems"], ids["maxItems"]) == (1, MAX_BATCH)
    internal = INTERNAL["components"]["schemas"]
    batch = internal["ScoreBatch"]["properties"]["items"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH)
    for document in (PUBLIC, INTERNAL):
        assert document["components"]["schemas"]["Id"]["pattern"] == anchored(ID_PATTERN)
    for record in ("Score", "ScoreUpdate", "ScoreItem"):
        properties = internal[record]["properties"]
        assert set(SCORE_FIELDS) <= set(properties)
        for field in SCORE_FIELDS:
            assert (properties[field]["minimum"], properties[field]["maximum"]) == (
                SCORE_MIN,
                SCORE_MAX,
            )
    security = PUBLIC["components"]["schemas"]["Security"]["properties"]
    assert {security[f]["maxLength"] for f in ("name", "symbol", "exchange")} == {TEXT_MAX}
    cursor = parameter(PUBLIC, "/securities", "get", "cursor")["schema"]
    assert cursor["pattern"] == anchored(CURSOR_LANGUAGE)


@given(st.from_regex(ID_PATTERN, fullmatch=True))
def test_every_issued_cursor_matches_the_documented_pattern(security_id: str) -> None:
    """The cursor of any id the API could list matches the cursor pattern."""
    assert CURSOR_LANGUAGE.fullmatch(encode_cursor(security_id))


@given(st.text(alphabet=ALPHABET + "=!. ", max_size=90))
def test_the_cursor_pattern_matches_only_cursors_the_library_takes(text: str) -> None:
    """A string matches the cursor pattern exactly when the library decodes it to an id it
    would itself have encoded that way: the document and the server agree on every value."""
    try:
        issued = encode_cursor(decode_cursor(text)) == text
    except ValueError:
        issued = False
    assert (CURSOR_LANGUAGE.fullmatch(text) is not None) == issued


def invalid_names(data: Any, kind: type) -> list[str]:
    with pytest.raises(Problem) as raised:
        structure(data, kind)
    assert raised.value.status == 422
    return [name for name, _ in raised.value.invalid_params]


def test_a_body_names_every_field_that_is_wrong() -> None:
    """The converter's detailed validation gives each failure's path, all of them at once."""
    good = dict.fromkeys(SCORE_FIELDS, 5.0)
    items = [
        good | {"security_id": "A1"},
        good | {"growth": "9", "security_id": "A2"},
        dict(good),
        good | {"security_id": "A4", "extra": 1},
        "not an object",
    ]
    names = invalid_names({"items": items}, internal_api.ScoreBatch)
    assert names == ["items[1].growth", "items[2].security_id", "items[3].extra", "items[4]"]
    assert invalid_names({"items": {"a": 1}}, internal_api.ScoreBatch) == ["items"]
    assert invalid_names([good], internal_api.ScoreBatch) == ["body"]


def test_a_declaration_must_match_its_path() -> None:
    """A path parameter the template lacks (or the reverse) fails when the route is declared."""

    async def handler(security_id: Annotated[str, PathParam(IDENTIFIER)]) -> Response:
        """A handler."""
        raise AssertionError

    declare("GET", "/scores/{security_id}", handler)
    with pytest.raises(TypeError, match="path parameters"):
        declare("GET", "/scores/{id}", handler)


def test_operation_ids_and_paths_are_as_published() -> None:
    """The generated documents keep the operation ids and paths clients know."""
    operations = {
        (path, method): op["operationId"]
        for document in (PUBLIC, INTERNAL)
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert {
        k: v for k, v in operations.items() if not re.match(r"/(healthz|readyz|openapi)", k[0])
    } == {
        ("/securities", "get"): "listSecurities",
        ("/securities/{id}", "get"): "getSecurity",
        ("/securities/{id}/score", "get"): "getScore",
        ("/scores", "get"): "getScores",
        ("/scores/{security_id}", "get"): "getScore",
        ("/scores/{security_id}", "put"): "putScore",
        ("/scores/batch", "post"): "putScores",
    }
