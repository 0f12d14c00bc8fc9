"""JSON Schemas of the wire types, generated from their attrs classes and the models' rules.

A field's schema comes from its type (``str``, ``float``, ``list[Score]``, ``X | None``,
``Literal[...]``, another attrs class), narrowed by what the data model says of a field of
that name in its records (:data:`FIELD_RULES`: ids match ``ID_PATTERN``, score values lie
between ``SCORE_MIN`` and ``SCORE_MAX``...), then by any facts the field itself declares in
its attrs metadata (:func:`facts`). Every number and pattern here is one of ``securecache.models``'
constants: nothing is restated.

Conventions the generator relies on, which the codec's converter keeps:

- objects take no other keys (the converter forbids extra keys), so ``additionalProperties``
  is false;
- a field without a default is required; a field whose default is None is left out of the
  JSON while it is None (see :func:`servers.problems.problem_response`), so it is optional
  and never null; a required ``X | None`` field is nullable.
"""

from __future__ import annotations

import datetime
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Union

import attrs

from securecache import models
from securecache.models import (
    ID_PATTERN,
    SCORE_FIELDS,
    SCORE_MAX,
    SCORE_MIN,
    TEXT_MAX,
)

Schema = dict[str, Any]

SCHEMA_FACTS: Final = "servers.schema"
"""attrs metadata key: JSON Schema keywords a field adds to what its type says."""

COMPONENTS: Final = "#/components/schemas/"


def anchored(pattern: re.Pattern[str] | str) -> str:
    """A JSON Schema ``pattern`` for a whole value (JSON Schema patterns search, Python's
    ``fullmatch`` does not): the one regular expression, used both ways."""
    body = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
    return f"^(?:{body})$"


def ref(name: str) -> Schema:
    return {"$ref": COMPONENTS + name}


def facts(**keywords: Any) -> dict[str, Any]:
    """attrs metadata for a field: JSON Schema keywords its type cannot say (a format,
    bounds), e.g. ``attrs.field(metadata=facts(format="uri"))``."""
    return {SCHEMA_FACTS: keywords}


ID: Final[Schema] = {
    "type": "string",
    "pattern": anchored(ID_PATTERN),
    "description": "1-64 characters of [A-Za-z0-9._:-], starting with a letter or digit.",
    "examples": ["SEC000001"],
}
"""The one id schema (a component: every id field and parameter refers to it)."""

NAMED: Final[Mapping[str, Schema]] = {"Id": ID}
"""Schemas that are components by name rather than by class."""

VERSION: Final[Schema] = {"type": "integer", "minimum": 1}
SCORE_VALUE: Final[Schema] = {"type": "number", "minimum": SCORE_MIN, "maximum": SCORE_MAX}
TEXT: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": TEXT_MAX}

FIELD_RULES: Final[Mapping[str, Schema]] = {
    "id": ref("Id"),
    "security_id": ref("Id"),
    "name": TEXT,
    "symbol": TEXT,
    "exchange": TEXT,
    "version": VERSION,
    **dict.fromkeys(SCORE_FIELDS, SCORE_VALUE),
}
"""What the data model says of its records' fields, by name (DESIGN's JSON): applied to the
classes of ``securecache.models`` and to classes derived from them."""
_MODELS: Final = models.__name__

_SCALARS: Final[Mapping[Any, Schema]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    type(None): {"type": "null"},
}
_ARRAYS: Final = (list, tuple, Sequence)


class Components:
    """The named schemas of one document, filled in as types are described."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}
        self._classes: dict[str, type] = {}

    def schema_of(self, kind: Any) -> Schema:
        """The JSON Schema of a Python type; attrs classes become components."""
        if kind is Any:
            return {}
        if kind in _SCALARS:
            return dict(_SCALARS[kind])
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is Literal:
            return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
        if origin in (Union, types.UnionType):
            options = [a for a in args if a is not type(None)]
            if len(options) == 1 and len(args) == 2:
                return _nullable(self.schema_of(options[0]))
            return {"anyOf": [self.schema_of(a) for a in args]}
        if origin in _ARRAYS or kind in _ARRAYS:
            item = args[0] if args else Any
            return {"type": "array", "items": self.schema_of(item)}
        if origin is dict or kind is dict:
            value = args[1] if len(args) == 2 else Any
            return {"type": "object", "additionalProperties": self.schema_of(value)}
        if attrs.has(origin or kind):
            return self._record(kind)
        raise TypeError(f"no JSON Schema for {kind!r}: describe it in servers.schemas")

    def _record(self, kind: Any) -> Schema:
        cls = typing.get_origin(kind) or kind
        params = getattr(cls, "__parameters__", ())
        bound = dict(zip(params, typing.get_args(kind), strict=True)) if params else {}
        if bound:  # a generic record (Page[Security]): described in place, not named
            return self._object(cls, bound)
        name = cls.__name__
        if self._classes.setdefault(name, cls) is not cls:
            raise TypeError(f"two classes named {name} in one document")
        if name not in self.schemas:
            self.schemas[name] = {}  # reserved first: records may refer to themselves
            self.schemas[name] = self._object(cls, {})
        return ref(name)

    def _object(self, cls: type, bound: Mapping[Any, Any]) -> Schema:
        hints = typing.get_type_hints(cls)
        model = any(c.__module__ == _MODELS for c in cls.__mro__)
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            kind = _substitute(hints[field.name], bound)
            omitted = field.default is None
            if omitted:  # left out while None: optional, never null
                kind = _without_none(kind)
            if field.name in FIELD_RULES and model:
                rule = dict(FIELD_RULES[field.name])
                schema = _nullable(rule) if _is_nullable(kind) else rule
            else:
                schema = self.schema_of(kind)
            schema = {**schema, **field.metadata.get(SCHEMA_FACTS, {})}
            properties[field.name] = schema
            if field.default is attrs.NOTHING:
                required.append(field.name)
        result: Schema = {"type": "object", "properties": properties}
        if cls.__doc__:
            result["description"] = cls.__doc__.strip().splitlines()[0]
        if required:
            result["required"] = required
        result["additionalProperties"] = False
        return result


def _substitute(kind: Any, bound: Mapping[Any, Any]) -> Any:
    if kind in bound:
        return bound[kind]
    args = typing.get_args(kind)
    if not args or not bound:
        return kind
    origin = typing.get_origin(kind)
    new = tuple(_substitute(a, bound) for a in args)
    if origin in (Union, types.UnionType):
        return Union[new]  # noqa: UP007 - built from a tuple
    return origin[new] if origin is not None else kind


def _is_nullable(kind: Any) -> bool:
    return typing.get_origin(kind) in (Union, types.UnionType) and type(None) in typing.get_args(
        kind
    )


def _without_none(kind: Any) -> Any:
    if not _is_nullable(kind):
        return kind
    rest = tuple(a for a in typing.get_args(kind) if a is not type(None))
    return rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007 - built from a tuple


def _nullable(schema: Schema) -> Schema:
    """``schema`` or null: a ``type`` list where one is given, else ``anyOf``."""
    kind = schema.get("type")
    if isinstance(kind, str) and "$ref" not in schema:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}
