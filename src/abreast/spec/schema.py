"""The model's classes (`model.py`) as a pydantic-core validator and as a JSON Schema.

One walk over each class's type hints builds both, so the two cannot drift apart:
`validator(cls)` checks a mapping read from the file and builds the frozen instance
(pydantic's lax rules and error kinds, e.g. `"3"` is accepted for an integer, and an
unknown key is `extra_forbidden`); `json_schema()` is what `abreast schema` prints.
pydantic-core alone is imported (about 20 ms), not pydantic's model layer.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Annotated, Any, Literal

from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from abreast.spec import model
from abreast.spec.model import NOT_IN_FILE, After, Doc, Ge, Gt, Key, Le, MinLen, Parse, Pattern


@functools.cache
def validator(cls: type) -> SchemaValidator:
    """Validates a mapping into an instance of `cls` (raises pydantic_core.ValidationError)."""
    return SchemaValidator(_model_schema(cls))


@functools.cache
def file_fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """{key in the file: (the field, its type with constraints)} for a model class."""
    hints = typing.get_type_hints(cls, vars(model), include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in NOT_IN_FILE:
            continue
        tp = hints[f.name]
        key = next((m.text for m in _metas(tp) if isinstance(m, Key)), f.name)
        out[key] = (f, tp)
    return out


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp.__module__ == model.__name__


# -- the validator -------------------------------------------------------------------------


def _model_schema(cls: type) -> cs.CoreSchema:
    fields: dict[str, cs.ModelField] = {}
    by_name = False
    for key, (f, tp) in file_fields(cls).items():
        schema = _schema(tp)
        if f.default is not dataclasses.MISSING:
            schema = cs.with_default_schema(schema, default=f.default)
        elif f.default_factory is not dataclasses.MISSING:
            schema = cs.with_default_schema(schema, default_factory=f.default_factory)
        if key != f.name:
            by_name = True
            fields[f.name] = cs.model_field(schema, validation_alias=key)
        else:
            fields[f.name] = cs.model_field(schema)
    config: cs.CoreConfig | None = (
        {"validate_by_name": True, "validate_by_alias": True} if by_name else None
    )
    return cs.model_schema(
        cls,
        cs.model_fields_schema(fields, model_name=cls.__name__, extra_behavior="forbid"),
        config=config,
    )


def _schema(tp: Any, metas: tuple[Any, ...] = ()) -> cs.CoreSchema:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extra = typing.get_args(tp)
        return _schema(base, (*metas, *extra))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args:
            rest = [a for a in args if a is not type(None)]
            inner = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
            return cs.nullable_schema(_schema(inner, metas))
        return _wrap(cs.union_schema([_schema(a) for a in args]), metas)
    if origin is Literal:
        return _wrap(cs.literal_schema(list(typing.get_args(tp))), metas)
    if origin is list:
        (item,) = typing.get_args(tp)
        return _wrap(cs.list_schema(_schema(item), min_length=_min_len(metas)), metas)
    if origin is dict:
        k, v = typing.get_args(tp)
        return _wrap(cs.dict_schema(_schema(k), _schema(v), min_length=_min_len(metas)), metas)
    if origin is tuple:
        return _wrap(cs.tuple_schema([_schema(a) for a in typing.get_args(tp)]), metas)
    if tp is bool:
        return _wrap(cs.bool_schema(), metas)
    if tp is int:
        ge, gt, le = (None if b is None else int(b) for b in _bounds(metas))
        return _wrap(cs.int_schema(ge=ge, gt=gt, le=le), metas)
    if tp is float:
        ge_f, gt_f, le_f = _bounds(metas)
        return _wrap(cs.float_schema(ge=ge_f, gt=gt_f, le=le_f, allow_inf_nan=False), metas)
    if tp is str:
        pattern = next((m.text for m in metas if isinstance(m, Pattern)), None)
        return _wrap(cs.str_schema(pattern=pattern, min_length=_min_len(metas)), metas)
    if is_model(tp):
        return _model_schema(tp)
    raise TypeError(f"no schema for {tp!r}")  # a type model.py should not use


def _wrap(schema: cs.CoreSchema, metas: tuple[Any, ...]) -> cs.CoreSchema:
    for m in metas:
        if isinstance(m, After):
            schema = cs.no_info_after_validator_function(m.fn, schema)
    for m in metas:
        if isinstance(m, Parse):
            schema = cs.no_info_before_validator_function(m.fn, schema)
    return schema


def _bounds(metas: tuple[Any, ...]) -> tuple[float | None, float | None, float | None]:
    """(at least, more than, at most)."""
    return (
        next((m.value for m in metas if isinstance(m, Ge)), None),
        next((m.value for m in metas if isinstance(m, Gt)), None),
        next((m.value for m in metas if isinstance(m, Le)), None),
    )


def _min_len(metas: tuple[Any, ...]) -> int | None:
    return next((m.value for m in metas if isinstance(m, MinLen)), None)


def _metas(tp: Any) -> tuple[Any, ...]:
    return tuple(typing.get_args(tp)[1:]) if typing.get_origin(tp) is Annotated else ()


# -- the JSON Schema -------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the workflow file, for editors."""
    defs: dict[str, Any] = {}
    top = _json_model(model.Workflow, defs)
    task = defs["Task"]
    task["properties"].pop("id", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "abreast workflow file (version 1)",
        **top,
        "patternProperties": {"^x-": {}},  # the user's own keys, ignored (YAML anchors)
        "$defs": defs,
    }


def _json_model(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    required = []
    for key, (f, tp) in file_fields(cls).items():
        prop = _json(tp, defs)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(key)
        elif isinstance(f.default, str | int | float | bool) and "default" not in prop:
            prop["default"] = f.default
        props[key] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    if cls.__doc__:
        out["description"] = cls.__doc__.split("\n\n")[0].replace("\n", " ")
    return out


def _json(tp: Any, defs: dict[str, Any], metas: tuple[Any, ...] = ()) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extra = typing.get_args(tp)
        return _json(base, defs, (*metas, *extra))
    doc = next((m.text for m in metas if isinstance(m, Doc)), None)
    out = _json_bare(tp, defs, metas)
    if doc:
        out = {**out, "description": doc}
    return out


def _json_bare(tp: Any, defs: dict[str, Any], metas: tuple[Any, ...]) -> dict[str, Any]:
    parse = next((m.json for m in metas if isinstance(m, Parse)), None)
    if parse is not None:
        return dict(parse)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        keep = tuple(m for m in metas if not isinstance(m, Doc))
        return {
            "anyOf": [{"type": "null"} if a is type(None) else _json(a, defs, keep) for a in args]
        }
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    n = _min_len(metas)
    if origin is list:
        (item,) = typing.get_args(tp)
        out: dict[str, Any] = {"type": "array", "items": _json(item, defs)}
        if n is not None:
            out["minItems"] = n
        return out
    if origin is dict:
        _, v = typing.get_args(tp)
        out = {"type": "object", "additionalProperties": _json(v, defs)}
        if n is not None:
            out["minProperties"] = n
        return out
    if origin is tuple:
        items = [_json(a, defs) for a in typing.get_args(tp)]
        n = len(items)
        return {"type": "array", "prefixItems": items, "minItems": n, "maxItems": n}
    if tp is bool:
        return {"type": "boolean"}
    if tp in (int, float):
        out = {"type": "integer" if tp is int else "number"}
        names = ("minimum", "exclusiveMinimum", "maximum")
        for name, bound in zip(names, _bounds(metas), strict=True):
            if bound is not None:
                out[name] = bound
        return out
    if tp is str:
        out = {"type": "string"}
        pattern = next((m.text for m in metas if isinstance(m, Pattern)), None)
        if pattern:
            out["pattern"] = pattern
        if n is not None:
            out["minLength"] = n
        return out
    if is_model(tp):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # taken, while its own fields are walked
            defs[tp.__name__] = _json_model(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"no JSON Schema for {tp!r}")
