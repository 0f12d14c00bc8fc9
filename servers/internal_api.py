"""The internal API (port 8081): read and write scores, for services holding a bearer token.

Run it with a ``securecache_writer`` database URL (it may write scores, never securities, and
never delete) and its own Redis ACL user (:func:`securecache.acl.setuser_rules`).

Authentication: ``Authorization: Bearer <token>`` against ``SECURECACHE_API_TOKENS`` (or
``..._FILE``). Every failure is 401 with a ``WWW-Authenticate: Bearer`` challenge, as RFC
6750 asks: no credentials gets the bare challenge, a malformed or unknown token adds
``error="invalid_token"``. 403 is never sent, because a valid token grants everything this
API does: there is no authenticated-but-not-allowed case. Tokens are compared as SHA-256
digests, in constant time, against every configured token (so timing tells nothing about a
token, or which matched) and are never logged. Authentication comes before anything in the
request is read.

``uvicorn servers.internal_api:app`` or ``python -m servers.internal_api``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from typing import Any, Final

import attrs
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from securecache import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    ScoreUpdate,
    ScoreWrite,
    SecureCache,
    Settings,
    ValidationError,
)
from securecache.models import validate_id
from servers.common import (
    ETAG_HEADER,
    INVALID_RESPONSE,
    NO_STORE_HEADER,
    UNAVAILABLE_RESPONSE,
    Endpoint,
    Methods,
    Problem,
    build_app,
    cache_of,
    entity_tags,
    header,
    id_param,
    invalid,
    json_content,
    json_response,
    not_found,
    openapi_document,
    problem,
    read_json,
    ref,
    version_etag,
)
from servers.telemetry import INTERNAL_SERVICE_NAME

MAX_IDS: Final = 500
"""Most ids one batch read may ask for (bounds the query string, the MGET and the query)."""
MAX_BATCH: Final = 500
"""Most scores one batch write may carry (one transaction; bounds the lock footprint)."""
PUT_BODY_LIMIT: Final = 4 * 1024
BATCH_BODY_LIMIT: Final = 256 * 1024
NO_STORE: Final = {"Cache-Control": "no-store"}
REALM: Final = 'Bearer realm="securecache-internal"'

_VERSION_TAG: Final = re.compile(r'"([1-9][0-9]{0,17})"')
_CONDITIONAL_ATTEMPTS: Final = 3


def _digest(token: bytes) -> bytes:
    # Tokens are compared as digests: equal lengths, so not even a token's length leaks.
    return hashlib.sha256(token).digest()


def _install_tokens(app: Starlette, settings: Settings) -> None:
    """Refuse to start without tokens: an internal API nobody can call is a mistake."""
    tokens = tuple(_digest(t.encode()) for t in settings.api_tokens if t)
    if not tokens:
        raise ConfigurationError(
            "the internal API needs at least one bearer token "
            "(SECURECACHE_API_TOKENS or SECURECACHE_API_TOKENS_FILE)",
            field="api_tokens",
        )
    app.state.tokens = tokens


def authenticate(request: Request) -> None:
    """Raise a 401 problem unless the request carries one of the configured tokens."""
    scheme, _, credentials = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Problem(
            401, "send Authorization: Bearer <token>", headers={"WWW-Authenticate": REALM}
        )
    # Header values arrive as latin-1 text; compare the bytes that were sent.
    given = _digest(credentials.strip().encode("latin-1"))
    matched = False
    for token in getattr(request.app.state, "tokens", ()):
        matched |= hmac.compare_digest(token, given)
    if not matched:
        raise Problem(
            401,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )


def authenticated(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        authenticate(request)
        return await endpoint(request)

    return guarded


@attrs.frozen
class IfMatch:
    """What If-Match allows: any existing score (``*``), or one of some versions."""

    any_version: bool
    versions: frozenset[int]

    def allows(self, version: int) -> bool:
        return self.any_version or version in self.versions


def if_match(request: Request) -> IfMatch | None:
    """The If-Match condition, by strong comparison (RFC 9110 13.1.1).

    Our tags are versions (``"7"``); a weak tag or any other tag can never match, so it only
    makes the write fail with 412. A value that is not an entity-tag list is a 422.
    """
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    tags = entity_tags(raw)
    if tags is None:
        raise invalid("If-Match", 'If-Match must be "*" or entity tags, as ETag sent them')
    matches = (_VERSION_TAG.fullmatch(t) for t in tags)
    versions = frozenset(int(m.group(1)) for m in matches if m is not None)
    return IfMatch(any_version="*" in tags, versions=versions)


async def conditional_upsert(
    cache: SecureCache, security_id: str, update: ScoreUpdate, condition: IfMatch | None
) -> ScoreWrite:
    """Write if the condition holds, atomically, in PostgreSQL.

    The library checks one version per write; a ``*`` or a list of versions is checked by
    trying the current version a conflict reports, a few times at most.
    """
    if condition is None:
        return await cache.scores.upsert(security_id, update)
    if not condition.any_version and not condition.versions:
        # Nothing can match; still, an unknown security is a 404 before it is a 412.
        if await cache.securities.get(security_id) is None:
            raise NotFoundError(f"unknown security {security_id!r}", security_id=security_id)
        raise ConflictError(
            f"If-Match names no version of the score of {security_id!r}", expected=0, actual=None
        )
    version = min(condition.versions) if condition.versions else 1
    for attempt in range(_CONDITIONAL_ATTEMPTS):
        try:
            return await cache.scores.upsert(security_id, update, if_version=version)
        except ConflictError as exc:
            last = attempt == _CONDITIONAL_ATTEMPTS - 1
            if exc.actual is None or last or not condition.allows(exc.actual):
                raise
            version = exc.actual
    raise AssertionError("unreachable")


@authenticated
async def get_score(request: Request) -> Response:
    security_id = id_param(request, "security_id")
    score = await cache_of(request).scores.get(security_id)
    if score is None:
        raise not_found(f"no score for security {security_id!r}")
    return json_response(score, headers={"ETag": version_etag(score.version), **NO_STORE})


@authenticated
async def get_scores(request: Request) -> Response:
    """Many scores in one round trip; ids without a score are listed under ``missing``."""
    values = request.query_params.getlist("ids")
    if not values:
        raise invalid("ids", f"ids is required: 1 to {MAX_IDS} comma-separated security ids")
    ids = [part for value in values for part in value.split(",")]
    if len(ids) > MAX_IDS:
        raise invalid("ids", f"ask for at most {MAX_IDS} ids at once, got {len(ids)}")
    unique = list(dict.fromkeys(validate_id(i, "ids") for i in ids))
    scores = await cache_of(request).scores.get_many(unique)
    return json_response(
        {
            "items": [scores[i] for i in unique if i in scores],
            "missing": [i for i in unique if i not in scores],
        },
        headers=NO_STORE,
    )


@authenticated
async def put_score(request: Request) -> Response:
    """Create or replace a score: 201 when created, 200 when updated; If-Match guards races."""
    security_id = id_param(request, "security_id")
    condition = if_match(request)
    update = ScoreUpdate.from_mapping(await read_json(request, PUT_BODY_LIMIT))
    write = await conditional_upsert(cache_of(request), security_id, update, condition)
    headers = {"ETag": version_etag(write.score.version), **NO_STORE}
    if write.created:
        headers["Location"] = f"/scores/{security_id}"
    return json_response(write.score, status=201 if write.created else 200, headers=headers)


def _batch_updates(data: object) -> dict[str, ScoreUpdate]:
    """Validate a whole batch before anything is written; errors name the item and field."""
    if not isinstance(data, dict):
        raise invalid("body", 'the body must be an object: {"items": [...]}')
    unknown = sorted(set(data) - {"items"})
    if unknown:
        raise invalid(str(unknown[0]), f"unknown field {unknown[0]!r}")
    items = data.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
        raise invalid("items", f"items must be an array of 1 to {MAX_BATCH} scores")
    updates: dict[str, ScoreUpdate] = {}
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if not isinstance(item, dict):
            raise invalid(where, "each item must be an object")
        fields = dict(item)
        if "security_id" not in fields:
            raise invalid(f"{where}.security_id", "security_id is required")
        try:
            security_id = validate_id(fields.pop("security_id"), "security_id")
            # A later item for the same security replaces an earlier one, as in a JSON object.
            updates.pop(security_id, None)
            updates[security_id] = ScoreUpdate.from_mapping(fields)
        except ValidationError as exc:
            raise invalid(f"{where}.{exc.field}" if exc.field else where, str(exc)) from None
    return updates


@authenticated
async def put_scores(request: Request) -> Response:
    """Upsert many scores in one transaction: all are written, or none."""
    updates = _batch_updates(await read_json(request, BATCH_BODY_LIMIT))
    writes = await cache_of(request).scores.upsert_many(updates)
    return json_response(
        {"items": [{"score": w.score, "created": w.created} for w in writes.values()]},
        headers=NO_STORE,
    )


ROUTES: Final = [
    Route("/scores", get_scores, methods=["GET"]),
    # Before the template, and for every method: /scores/batch is never a security's score.
    Route("/scores/batch", Methods(POST=put_scores)),
    Route("/scores/{security_id}", Methods(GET=get_score, PUT=put_score)),
]

_SECURITY_ID: Final = {"name": "security_id", "in": "path", "required": True, "schema": ref("Id")}
_UNAUTHORIZED: Final = problem(
    "No bearer token, or not a valid one.",
    **{"WWW-Authenticate": header("`Bearer realm=...`, with `error=...` for a bad token.")},
)
_WRITE_ERRORS: Final = {
    "400": problem("The body is not JSON."),
    "401": _UNAUTHORIZED,
    "404": problem("No such security: nothing was written."),
    "413": problem("The body is too large."),
    "415": problem("The body is not `application/json` (UTF-8)."),
    "422": problem("A field is missing, unknown or out of range: nothing was written."),
    "503": UNAVAILABLE_RESPONSE,
}
_SCORE_FIELDS: Final[dict[str, Any]] = {
    f: {"type": "number", "minimum": 0, "maximum": 10}
    for f in ("growth", "value", "quality", "momentum")
}
_SCORE_WRITTEN: Final[dict[str, Any]] = {
    "description": "The score as committed.",
    "headers": {"ETag": ETAG_HEADER, "Cache-Control": NO_STORE_HEADER},
    "content": json_content(ref("Score")),
}

OPENAPI: Final = openapi_document(
    title="securecache internal API",
    description=(
        "Score reads and writes for services with a bearer token. Writes commit in PostgreSQL,"
        " then update the shared cache. Errors are RFC 9457 problem details."
    ),
    security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
    paths={
        "/scores": {
            "get": {
                "operationId": "getScores",
                "summary": "Many scores at once.",
                "parameters": [
                    {
                        "name": "ids",
                        "in": "query",
                        "required": True,
                        "style": "form",
                        "explode": False,
                        "schema": {
                            "type": "array",
                            "items": ref("Id"),
                            "minItems": 1,
                            "maxItems": MAX_IDS,
                        },
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The scores found, in request order, and the ids without.",
                        "headers": {"Cache-Control": NO_STORE_HEADER},
                        "content": json_content(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {"type": "array", "items": ref("Score")},
                                    "missing": {"type": "array", "items": ref("Id")},
                                },
                                "required": ["items", "missing"],
                                "additionalProperties": False,
                            }
                        ),
                    },
                    "401": _UNAUTHORIZED,
                    "422": INVALID_RESPONSE,
                    "503": UNAVAILABLE_RESPONSE,
                },
            }
        },
        "/scores/{security_id}": {
            "get": {
                "operationId": "getScore",
                "summary": "The score of one security.",
                "parameters": [_SECURITY_ID],
                "responses": {
                    "200": {
                        "description": "The score; its ETag is what If-Match takes.",
                        "headers": {"ETag": ETAG_HEADER, "Cache-Control": NO_STORE_HEADER},
                        "content": json_content(ref("Score")),
                    },
                    "401": _UNAUTHORIZED,
                    "404": problem("The security has no score, or no such security."),
                    "422": INVALID_RESPONSE,
                    "503": UNAVAILABLE_RESPONSE,
                },
            },
            "put": {
                "operationId": "putScore",
                "summary": "Create or replace the score of a security.",
                "parameters": [
                    _SECURITY_ID,
                    {
                        "name": "If-Match",
                        "in": "header",
                        "required": False,
                        "description": (
                            "Write only if the score is at one of these versions (the ETags"
                            " GET and PUT return), or exists at all for `*`; else 412."
                        ),
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "properties": _SCORE_FIELDS,
                            "required": list(_SCORE_FIELDS),
                            "additionalProperties": False,
                        }
                    ),
                },
                "responses": {
                    "200": {**_SCORE_WRITTEN, "description": "Updated."},
                    "201": {
                        **_SCORE_WRITTEN,
                        "description": "Created.",
                        "headers": {
                            **_SCORE_WRITTEN["headers"],
                            "Location": header("The score's URL."),
                        },
                    },
                    **_WRITE_ERRORS,
                    "412": problem("If-Match names another version: nothing was written."),
                },
            },
        },
        "/scores/batch": {
            "post": {
                "operationId": "putScores",
                "summary": "Create or replace many scores in one transaction (all or none).",
                "description": "A later item for the same security replaces an earlier one.",
                "requestBody": {
                    "required": True,
                    "content": json_content(
                        {
                            "type": "object",
                            "properties": {
                                "items": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": MAX_BATCH,
                                    "items": {
                                        "type": "object",
                                        "properties": {"security_id": ref("Id"), **_SCORE_FIELDS},
                                        "required": ["security_id", *_SCORE_FIELDS],
                                        "additionalProperties": False,
                                    },
                                }
                            },
                            "required": ["items"],
                            "additionalProperties": False,
                        }
                    ),
                },
                "responses": {
                    "200": {
                        "description": "Every score as committed, with whether it was created.",
                        "headers": {"Cache-Control": NO_STORE_HEADER},
                        "content": json_content(
                            {
                                "type": "object",
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "score": ref("Score"),
                                                "created": {"type": "boolean"},
                                            },
                                            "required": ["score", "created"],
                                            "additionalProperties": False,
                                        },
                                    }
                                },
                                "required": ["items"],
                                "additionalProperties": False,
                            }
                        ),
                    },
                    **_WRITE_ERRORS,
                },
            }
        },
    },
)


def create_app(
    settings: Settings | None = None, *, tracer_provider: trace.TracerProvider | None = None
) -> Starlette:
    """The internal API; ``settings`` None reads ``SECURECACHE_*`` at startup."""
    return build_app(
        routes=ROUTES,
        openapi=OPENAPI,
        settings=settings,
        tracer_provider=tracer_provider,
        default_service_name=INTERNAL_SERVICE_NAME,
        on_startup=_install_tokens,
    )


app = create_app()


if __name__ == "__main__":
    from servers.run import main_one

    main_one(app, default_port=8081)
