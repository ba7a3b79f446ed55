"""Config types — dataclasses or TypedDicts — their JSON Schema, and decoding
`with:` into them with errors that name the field (`commits[2]`, `env.PATH`).

A field's description comes from a dataclass field's `metadata={"description":
...}`, or from a string in `Annotated[T, "..."]` (either kind)."""

import dataclasses
import types
import typing


class ConfigError(Exception):
    """The step's `with:` does not fit its config type (WIT
    `step-error.invalid-config`): `field` is the path, when known."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


_SIMPLE = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _optional(tp):
    """`T` for `Optional[T]` / `T | None`, else None."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def is_config_type(tp):
    """Whether `tp` can be a step's config type: a dataclass or a TypedDict."""
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or typing.is_typeddict(tp))


_WRAPPERS = tuple(w for w in (getattr(typing, "Required", None), getattr(typing, "NotRequired", None)) if w)


def _unwrap(tp):
    """`(T, description)` of `Annotated[T, "description", ...]`, and of
    `Required[T]` / `NotRequired[T]` (a TypedDict's), else `(tp, None)`."""
    description = None
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp, *extras = typing.get_args(tp)
            description = next((e for e in extras if isinstance(e, str)), description)
        elif origin in _WRAPPERS:
            (tp,) = typing.get_args(tp)
        else:
            return tp, description


def _fields(cls):
    """`[(name, type, description, required)]` of a dataclass or TypedDict."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            tp, description = _unwrap(hints[f.name])
            description = f.metadata.get("description", description)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out.append((f.name, tp, description, required))
    else:
        for name, hint in hints.items():
            tp, description = _unwrap(hint)
            out.append((name, tp, description, name in cls.__required_keys__))
    return out


def _schema(tp):
    tp, _ = _unwrap(tp)
    inner = _optional(tp)
    if inner is not None:
        return {"anyOf": [_schema(inner), {"type": "null"}]}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if tp is typing.Any:
        return {}
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp) or (typing.Any,)
        return {"type": "array", "items": _schema(item)}
    if origin is dict:
        key, value = typing.get_args(tp) or (str, typing.Any)
        if key is not str:
            raise TypeError(f"config maps need string keys, not {key}")
        return {"type": "object", "additionalProperties": _schema(value)}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(tp))}
    if is_config_type(tp):
        return _object_schema(tp)
    raise TypeError(f"{tp!r} cannot be a config field type (str, int, float, bool, list, dict, "
                    f"Optional, Literal, Annotated, a dataclass or a TypedDict)")


def _object_schema(cls):
    props, required = {}, []
    for name, tp, description, needed in _fields(cls):
        s = _schema(tp)
        if description is not None:
            s["description"] = description
        props[name] = s
        if needed:
            required.append(name)
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    doc = cls.__doc__
    if doc and not doc.startswith(cls.__name__ + "(") and doc != dict.__doc__:
        out["description"] = doc.strip()
    return out


def schema_of(cls):
    """The JSON Schema (draft 2020-12) of a config dataclass or TypedDict."""
    schema = _object_schema(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _kind(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a map"


def _join(path, key):
    return f"{path}.{key}" if path else key


def _decode(tp, value, path):
    tp, _ = _unwrap(tp)
    inner = _optional(tp)
    if inner is not None:
        return None if value is None else _decode(inner, value, path)
    if tp is typing.Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected a boolean, found {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected a whole number, found {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, found {_kind(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, found {_kind(value)}")
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"expected one of {', '.join(map(repr, allowed))}, found {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (typing.Any,)
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, found {_kind(value)}")
        return [_decode(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp) or (str, typing.Any)
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a map, found {_kind(value)}")
        return {k: _decode(item, v, _join(path, k)) for k, v in value.items()}
    if is_config_type(tp):
        return _decode_object(tp, value, path)
    raise TypeError(f"{tp!r} cannot be a config field type")


def _decode_object(cls, value, path):
    """A dataclass instance, or for a TypedDict the dict itself (checked)."""
    if not isinstance(value, dict):
        raise ConfigError(path or None, f"expected a map, found {_kind(value)}")
    fields = _fields(cls)
    names = [name for name, *_ in fields]
    for key in value:
        if key not in names:
            raise ConfigError(_join(path, key),
                              f"unknown setting `{key}`; expected one of {', '.join(names)}")
    args = {}
    for name, tp, _, required in fields:
        if name in value:
            args[name] = _decode(tp, value[name], _join(path, name))
        elif required:
            raise ConfigError(_join(path, name), f"missing setting `{name}`")
    return cls(**args)


def decode(cls, text):
    """Decodes the JSON text of a step's `with:` into `cls`, a dataclass or a
    TypedDict."""
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(None, f"the configuration is not JSON: {e}") from None
    return _decode_object(cls, value, "")
