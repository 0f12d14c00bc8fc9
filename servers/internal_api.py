"""The internal API (port 8081): read and write scores, for services holding a bearer token.

Run it with a ``securecache_writer`` database URL (it may write scores, never securities, and
never delete) and its own Redis ACL user (:func:`securecache.ops.acl.setuser_rules`).

Authentication: ``Authorization: Bearer <token>`` against ``SECURECACHE_API_TOKENS`` (or
``..._FILE``), see :mod:`servers.auth`; every operation here needs it, the probes and the
document do not.

``python -m servers internal`` (see :mod:`servers.launcher`), or ``uvicorn
servers.internal_api:app``.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import attrs
from opentelemetry import metrics, trace
from starlette.applications import Starlette
from starlette.responses import Response

from securecache import (
    ConflictError,
    NotFoundError,
    Score,
    ScoreUpdate,
    ScoreWrite,
    SecureCache,
    Settings,
    ValidationError,
    codec,
)
from securecache.models import MAX_BATCH, SCORE_FIELDS, validate_id
from servers.app import build_app, document
from servers.auth import BearerAuth
from servers.conditional import IF_MATCH, IfMatch, version_etag
from servers.params import (
    IDENTIFIER,
    JSON,
    HeaderParam,
    JsonBody,
    PathParam,
    QueryParam,
    identifiers,
)
from servers.problems import not_found
from servers.routes import ETAG, NO_STORE, UNAVAILABLE, Api, Reply, ResponseHeader, failure
from servers.schemas import facts, ref
from servers.settings import ServerSettings
from servers.telemetry import INTERNAL_SERVICE_NAME

PUT_BODY_LIMIT: Final = 4 * 1024
BATCH_BODY_LIMIT: Final = 256 * 1024
NO_STORE_HEADERS: Final = {"Cache-Control": "no-store"}
_CONDITIONAL_ATTEMPTS: Final = 3

API: Final = Api(
    "securecache internal API",
    "Score reads and writes for services with a bearer token. Writes commit in PostgreSQL,"
    " then update the shared cache. Errors are RFC 9457 problem details.",
    auth=BearerAuth(realm="securecache-internal"),
)


# -- what goes over the wire, beyond the library's records -------------------------------------


def _valid_id(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    validate_id(value, attribute.name)


def _batch_size(_instance: object, attribute: attrs.Attribute[Any], value: list[Any]) -> None:
    if not 1 <= len(value) <= MAX_BATCH:
        raise ValidationError(
            f"{attribute.name} must be an array of 1 to {MAX_BATCH} scores, got {len(value)}",
            field=attribute.name,
        )


@attrs.frozen
class ScoreItem(ScoreUpdate):
    """One score of a batch: the values, and the security they belong to."""

    # Keyword-only: an attrs subclass's new fields come after the inherited ones.
    security_id: str = attrs.field(validator=_valid_id, kw_only=True)

    def update(self) -> ScoreUpdate:
        return ScoreUpdate(**{f: getattr(self, f) for f in SCORE_FIELDS})


@attrs.frozen
class ScoreBatch:
    """Scores to write in one transaction; a later item for a security replaces an earlier."""

    items: list[ScoreItem] = attrs.field(
        validator=_batch_size, metadata=facts(minItems=1, maxItems=MAX_BATCH)
    )


@attrs.frozen
class ScoresFound:
    """The scores found, in request order, and the ids without one."""

    items: list[Score]
    missing: list[str] = attrs.field(metadata=facts(items=ref("Id")))


@attrs.frozen
class Written:
    """A score as committed, and whether the write created it."""

    score: Score
    created: bool


@attrs.frozen
class BatchWritten:
    """Every score of a batch as committed."""

    items: list[Written]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON through the library's one converter, so HTTP and Redis share a wire format."""
    return Response(
        codec.dumps(data),
        status_code=status,
        media_type=JSON,
        headers={**NO_STORE_HEADERS, **(headers or {})},
    )


# -- operations -----------------------------------------------------------------------------

SECURITY_ID: Final = PathParam(IDENTIFIER)
_NO_STORE: Final = {"Cache-Control": NO_STORE}
_WRITTEN_HEADERS: Final = {"ETag": ETAG, "Cache-Control": NO_STORE}
_NOTHING_WRITTEN: Final = failure(
    422, "A field is missing, unknown or out of range: nothing was written."
)


@API.get(
    "/scores",
    replies=[
        Reply(200, "The scores found, and the ids without.", body=ScoresFound, headers=_NO_STORE),
        UNAVAILABLE,
    ],
)
async def get_scores(
    cache: SecureCache,
    ids: Annotated[list[str], QueryParam(identifiers(MAX_BATCH))],
) -> Response:
    """Many scores at once.

    Ids without a score are listed under ``missing``; an id asked for twice is answered once.
    """
    scores = await cache.scores.get_many(ids)
    return _json(
        ScoresFound(
            items=[scores[i] for i in ids if i in scores],
            missing=[i for i in ids if i not in scores],
        )
    )


@API.get(
    "/scores/{security_id}",
    replies=[
        Reply(
            200,
            "The score; its ETag is what If-Match takes.",
            body=Score,
            headers=_WRITTEN_HEADERS,
        ),
        failure(404, "The security has no score, or no such security."),
        UNAVAILABLE,
    ],
)
async def get_score(cache: SecureCache, security_id: Annotated[str, SECURITY_ID]) -> Response:
    """The score of one security."""
    score = await cache.scores.get(security_id)
    if score is None:
        raise not_found(f"no score for security {security_id!r}")
    return _json(score, headers={"ETag": version_etag(score.version)})


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


@API.put(
    "/scores/{security_id}",
    replies=[
        Reply(200, "Updated.", body=Score, headers=_WRITTEN_HEADERS),
        Reply(
            201,
            "Created.",
            body=Score,
            headers={**_WRITTEN_HEADERS, "Location": ResponseHeader("The score's URL.")},
        ),
        failure(404, "No such security: nothing was written."),
        failure(412, "If-Match names another version: nothing was written."),
        _NOTHING_WRITTEN,
        UNAVAILABLE,
    ],
)
async def put_score(
    cache: SecureCache,
    security_id: Annotated[str, SECURITY_ID],
    update: Annotated[ScoreUpdate, JsonBody(limit=PUT_BODY_LIMIT)],
    if_match: Annotated[
        IfMatch | None,
        HeaderParam(
            IF_MATCH,
            name="If-Match",
            description=(
                "Write only if the score is at one of these versions (the ETags GET and PUT"
                " return), or exists at all for `*`; else 412. An empty list matches nothing."
            ),
        ),
    ] = None,
) -> Response:
    """Create or replace the score of a security.

    201 when created, 200 when updated; If-Match guards against lost updates.
    """
    write = await conditional_upsert(cache, security_id, update, if_match)
    headers = {"ETag": version_etag(write.score.version)}
    if write.created:
        headers["Location"] = f"/scores/{security_id}"
    return _json(write.score, status=201 if write.created else 200, headers=headers)


@API.post(
    "/scores/batch",
    replies=[
        Reply(
            200,
            "Every score as committed, with whether it was created.",
            body=BatchWritten,
            headers=_NO_STORE,
        ),
        failure(404, "No such security: nothing was written."),
        _NOTHING_WRITTEN,
        UNAVAILABLE,
    ],
)
async def put_scores(
    cache: SecureCache, batch: Annotated[ScoreBatch, JsonBody(limit=BATCH_BODY_LIMIT)]
) -> Response:
    """Create or replace many scores in one transaction (all or none).

    A later item for the same security replaces an earlier one.
    """
    updates: dict[str, ScoreUpdate] = {}
    for item in batch.items:
        updates.pop(item.security_id, None)  # as in a JSON object: the last one wins, in place
        updates[item.security_id] = item.update()
    writes = await cache.scores.upsert_many(updates)
    return _json(BatchWritten([Written(w.score, w.created) for w in writes.values()]))


OPENAPI: Final = document(API)
"""The document ``GET /openapi.json`` serves."""


def create_app(
    settings: Settings | None = None,
    *,
    server: ServerSettings | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Starlette:
    """The internal API; ``settings`` / ``server`` None read ``SECURECACHE_*`` at startup.

    ``server`` given must hold at least one token, or this raises ``ConfigurationError``.
    """
    return build_app(
        API,
        settings=settings,
        server=server,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        default_service_name=INTERNAL_SERVICE_NAME,
    )


app = create_app()
"""For ``uvicorn servers.internal_api:app``: settings from the environment at startup."""
