"""Request parameters and bodies: what a route may declare, and how each is read.

A handler declares what it takes in its signature, as :pep:`593` annotations::

    limit: Annotated[int, QueryParam(integer(1, MAX_PAGE))] = DEFAULT_LIMIT
    security_id: Annotated[str, PathParam(IDENTIFIER)]
    update: Annotated[ScoreUpdate, JsonBody(limit=4096)]

A :class:`Kind` holds both halves of one parameter's rules, the JSON Schema the OpenAPI
document shows and the parser the server runs, built from the same numbers and patterns (the
constants of ``securecache.models``), so the two cannot drift apart. A body is structured
into its attrs class by the codec's one converter, with cattrs' detailed validation: each
failure's path (``items[3].growth``) becomes a name in the 422's ``invalid_params``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, TypeVar

import attrs
import cattrs
import orjson
from cattrs.cols import is_mutable_sequence, list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from starlette.requests import Request

from securecache import ValidationError, codec
from securecache.models import validate_id
from servers.problems import MALFORMED_JSON, Problem, invalid
from servers.schemas import Schema, anchored, ref

T = TypeVar("T")

JSON: Final = "application/json"
Location = Literal["path", "query", "header"]


@attrs.frozen
class Kind:
    """One parameter's rules: its JSON Schema, and the parser that enforces exactly that.

    ``parse(value, name)`` returns the value for the handler or raises ``ValueError`` (a
    ``ValidationError`` is one) saying what is wrong; the 422 names the parameter. With
    ``many`` the parameter is a comma-separated list (form style, not exploded) and ``parse``
    gets the whole value, repeated parameters joined by commas.
    """

    schema: Schema
    parse: Callable[[str, str], Any]
    many: bool = False


def _as_text(value: str, _name: str) -> str:
    return value


def text(
    pattern: re.Pattern[str] | None = None,
    *,
    min_length: int | None = None,
    format_: str | None = None,
    description: str | None = None,
) -> Kind:
    """A string, matching ``pattern`` in full if one is given, of at least ``min_length``."""
    schema: Schema = {"type": "string"}
    if min_length is not None:
        schema["minLength"] = min_length
    if pattern is not None:
        schema["pattern"] = anchored(pattern)
    if format_ is not None:
        schema["format"] = format_
    if description is not None:
        schema["description"] = description
    if pattern is None and min_length is None:
        return Kind(schema=schema, parse=_as_text)

    def parse(value: str, name: str) -> str:
        too_short = min_length is not None and len(value) < min_length
        if too_short or (pattern is not None and pattern.fullmatch(value) is None):
            raise ValueError(f"{name} is not well-formed, got {value!r:.40}")
        return value

    return Kind(schema=schema, parse=parse)


def integer(minimum: int, maximum: int) -> Kind:
    """An integer from ``minimum`` to ``maximum``, written in plain digits (no sign, no
    spaces, no exponent: what a client would send, and nothing a fuzzer could sneak in)."""
    digits = len(str(maximum))

    def parse(value: str, name: str) -> int:
        ok = value.isascii() and value.isdigit() and len(value) <= digits
        if not ok or not minimum <= int(value) <= maximum:
            raise ValueError(
                f"{name} must be an integer from {minimum} to {maximum}, got {value!r:.40}"
            )
        return int(value)

    return Kind(schema={"type": "integer", "minimum": minimum, "maximum": maximum}, parse=parse)


IDENTIFIER: Final = Kind(schema=ref("Id"), parse=validate_id)
"""A security id: ``securecache.models.ID_PATTERN``, checked by ``validate_id``."""


def identifiers(max_items: int) -> Kind:
    """1 to ``max_items`` comma-separated ids, repeats dropped (first place kept)."""

    def parse(value: str, name: str) -> list[str]:
        ids = value.split(",")
        if len(ids) > max_items:
            raise ValueError(f"ask for at most {max_items} {name} at once, got {len(ids)}")
        return list(dict.fromkeys(validate_id(i, name) for i in ids))

    return Kind(
        schema={"type": "array", "items": ref("Id"), "minItems": 1, "maxItems": max_items},
        parse=parse,
        many=True,
    )


# -- where a parameter comes from ---------------------------------------------------------


@attrs.frozen
class Param:
    """A parameter declaration: ``Annotated[T, QueryParam(kind)]`` in a handler's signature.

    ``name`` is the name on the wire when it differs from the argument's (``If-Match``).
    """

    kind: Kind
    name: str | None = None
    description: str | None = None
    location: Location = attrs.field(init=False, default="query")

    def read(self, request: Request, name: str) -> str | None:
        """The raw value sent, or None when the parameter is absent."""
        if self.location == "path":
            value: str | None = request.path_params.get(name)
            return value
        if self.location == "header":
            # What request.headers.get(name) returns (ASGI header names are lower case),
            # without building the Headers object.
            wanted = name.lower().encode("latin-1")
            for key, raw in request.scope["headers"]:
                if key == wanted:
                    return str(raw.decode("latin-1"))
            return None
        if self.kind.many:
            values = request.query_params.getlist(name)
            return ",".join(values) if values else None
        return request.query_params.get(name)


@attrs.frozen
class PathParam(Param):
    location: Location = attrs.field(init=False, default="path")


@attrs.frozen
class QueryParam(Param):
    location: Location = attrs.field(init=False, default="query")


@attrs.frozen
class HeaderParam(Param):
    location: Location = attrs.field(init=False, default="header")


# -- bodies ---------------------------------------------------------------------------------


@attrs.frozen
class JsonBody:
    """A JSON request body: ``Annotated[ScoreUpdate, JsonBody(limit=4096)]``.

    The body is refused with 415 unless it is JSON (UTF-8), with 413 past ``limit`` bytes,
    with 400 unless it parses, and with 422 unless it structures into the annotated class.
    """

    limit: int
    description: str | None = None


def _strict_object(kind: type, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    structure: Callable[[Any, Any], Any] = conv.gen_structure_attrs_fromdict(kind)

    def strict(value: Any, target: Any) -> Any:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {_json_type(value)}")
        return structure(value, target)

    return strict


def _strict_array(kind: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    structure: Callable[[Any, Any], Any] = list_structure_factory(kind, conv)

    def strict(value: Any, target: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {_json_type(value)}")
        return structure(value, target)

    return strict


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _body_converter() -> cattrs.Converter:
    """The codec's one converter, told to report every failure with its path, and to take
    no array or object for another (cattrs would read an object's keys as a list)."""
    conv = codec.converter.copy(detailed_validation=True)
    conv.register_structure_hook_factory(attrs.has, _strict_object)
    conv.register_structure_hook_factory(is_mutable_sequence, _strict_array)
    return conv


BODY_CONVERTER: Final = _body_converter()


async def read_json(request: Request, limit: int) -> Any:
    """The decoded JSON body: 415 unless JSON, 413 past ``limit`` bytes, 400 unless valid.

    The limit holds while reading, so a client that lies in Content-Length, or sends none,
    cannot make the server buffer more than ``limit`` bytes.
    """
    content_type = request.headers.get("content-type", "")
    media_type, _, params = content_type.partition(";")
    charset = re.search(r"charset\s*=\s*\"?([^\s;\"]+)", params, re.IGNORECASE)
    if media_type.strip().lower() != JSON or (
        charset is not None and charset.group(1).lower() not in {"utf-8", "utf8"}
    ):
        raise Problem(415, f"send the body as {JSON} (UTF-8)")
    too_large = Problem(413, f"the body exceeds {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(
            400,
            f"the body is not valid JSON: {exc.msg}",
            type_=MALFORMED_JSON,
            title="Malformed JSON",
        ) from None


def structure(data: Any, kind: type[T]) -> T:
    """``data`` as a ``kind``, or a 422 naming every field that was wrong."""
    try:
        return BODY_CONVERTER.structure(data, kind)
    except Exception as exc:
        failures = list(_failures(exc, ""))
        if not failures:
            raise
        raise invalid(failures) from None


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _failures(exc: BaseException, path: str) -> Iterator[tuple[str, str]]:
    """(name, reason) for each failure in a cattrs error tree; the root is ``body``."""
    here = path or "body"
    if isinstance(exc, IterableValidationError):
        items, other = exc.group_exceptions()
        for sub, item in items:
            yield from _failures(sub, _join(path, item.index))
        for sub in other:
            yield from _failures(sub, path)
    elif isinstance(exc, ClassValidationError):
        fields, other = exc.group_exceptions()
        for sub, field in fields:
            yield from _failures(sub, _join(path, field.name))
        for sub in other:
            yield from _failures(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield _join(path, key), f"unknown field {key!r}"
    elif isinstance(exc, ValidationError):
        # Raised by a record's own validators, which name the field they check.
        yield (_join(path, exc.field) if exc.field else here), str(exc)
    elif isinstance(exc, KeyError):
        yield here, f"{here} is required"
    elif isinstance(exc, TypeError | ValueError):
        yield here, f"{here}: {exc}"
