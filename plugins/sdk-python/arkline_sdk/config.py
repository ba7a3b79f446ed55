"""Config dataclasses: their JSON Schema, and decoding `with:` into them with
errors that name the field (`commits[2]`, `env.PATH`)."""

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


def _schema(tp):
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
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    raise TypeError(f"{tp!r} cannot be a config field type (str, int, float, bool, list, dict, "
                    f"Optional, Literal or a dataclass)")


def _object_schema(cls):
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        s = _schema(hints[f.name])
        if "description" in f.metadata:
            s["description"] = f.metadata["description"]
        props[f.name] = s
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out["description"] = cls.__doc__.strip()
    return out


def schema_of(cls):
    """The JSON Schema (draft 2020-12) of a config dataclass."""
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
    if dataclasses.is_dataclass(tp):
        return _decode_object(tp, value, path)
    raise TypeError(f"{tp!r} cannot be a config field type")


def _decode_object(cls, value, path):
    if not isinstance(value, dict):
        raise ConfigError(path or None, f"expected a map, found {_kind(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields:
            raise ConfigError(_join(path, key),
                              f"unknown setting `{key}`; expected one of {', '.join(fields)}")
    args = {}
    for name, f in fields.items():
        if name in value:
            args[name] = _decode(hints[name], value[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(path, name), f"missing setting `{name}`")
    return cls(**args)


def decode(cls, text):
    """Decodes the JSON text of a step's `with:` into the dataclass `cls`."""
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(None, f"the configuration is not JSON: {e}") from None
    return _decode_object(cls, value, "")
