"""Responses of records (servers.conditional), without servers: what is sent is always the
record's own JSON and version tag, however its encoding was remembered."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.responses import Response

from securecache import Security, codec
from servers import conditional

NOW = datetime(2026, 11, 26, tzinfo=UTC)


def security(n: int, version: int = 1) -> Security:
    return Security(
        id=f"SEC{n:06d}", name=f"Company {n}", symbol=f"T{n}", exchange="XNYS",
        version=version, updated_at=NOW,
    )  # fmt: skip


def sent(record: Security, if_none_match: str | None = None) -> tuple[int, bytes, str]:
    response = conditional.record_representation(if_none_match, record, "public, max-age=5")
    return response.status_code, bytes(response.body), dict(response.headers)["etag"]


def test_every_record_is_sent_as_its_own_json_and_version() -> None:
    """Past the memo's bound and with records made and dropped in between (a dropped
    record's id may be reused by the next), each response is that record's JSON."""
    for n in range(3 * conditional._ENCODED_RECORDS // 2):
        record = security(n % 700, version=n + 1)  # the previous one is dropped here
        assert sent(record) == (200, codec.dumps(record), f'"{n + 1}"')
    assert len(conditional._encoded) <= conditional._ENCODED_RECORDS


def test_the_same_record_is_encoded_once_and_still_answers_conditions() -> None:
    """A record served again reuses its encoding; If-None-Match with its tag is a 304."""
    record = security(1, version=7)
    first = conditional.record_representation(None, record, "public, max-age=5")
    again = conditional.record_representation(None, record, "public, max-age=5")
    assert again.body is first.body
    assert sent(record, '"7"') == (304, b"", '"7"')
    assert sent(record, '"6"')[0] == 200


def test_a_remembered_record_is_sent_with_the_headers_starlette_would_send() -> None:
    """The headers made once per record are Starlette's own for that body, under the
    Cache-Control asked for each time; a response's headers are its own to change."""
    record = security(2, version=3)
    for cache_control in ("public, max-age=5", "no-store", "public, max-age=5"):
        response = conditional.record_representation(None, record, cache_control)
        expected = Response(
            codec.dumps(record),
            media_type="application/json",
            headers={"ETag": '"3"', "Cache-Control": cache_control},
        )
        assert sorted(response.raw_headers) == sorted(expected.raw_headers)
        response.headers["x-changed"] = "1"
    again = conditional.record_representation(None, record, "public, max-age=5")
    assert "x-changed" not in again.headers
    not_modified = conditional.record_representation('W/"3"', record, "no-store")
    assert (not_modified.status_code, not_modified.body) == (304, b"")
    assert sorted(not_modified.raw_headers) == [(b"cache-control", b"no-store"), (b"etag", b'"3"')]
