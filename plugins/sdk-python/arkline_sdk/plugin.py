"""Declaring steps and exporting them as the component's `plugin`."""

import dataclasses
import json
import typing

from .config import ConfigError, decode, is_config_type, schema_of
from .errors import HostError, StepFailed


@dataclasses.dataclass
class Context:
    """Where and as what a step runs (the WIT `context`)."""

    engine: str
    pipeline: str
    run: int
    stage: str
    step_name: str
    step_type: str
    attempt: int
    workspace: str
    env: dict


@dataclasses.dataclass
class Outcome:
    """What a step returns: named outputs and an optional one-line summary.
    A step may also return a plain `dict` of outputs, or None."""

    outputs: dict = dataclasses.field(default_factory=dict)
    summary: typing.Optional[str] = None


class Plugin:
    """The steps of one biz."""

    def __init__(self):
        self._steps = {}

    def step(self, id, description):
        """Declares a step type: the decorated function takes `(ctx, cfg)`, where
        `cfg` is an instance of the dataclass or TypedDict its second parameter
        is annotated with (or the raw JSON value without an annotation)."""

        def register(fn):
            hints = typing.get_type_hints(fn)
            params = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
            config = hints.get(params[1]) if len(params) > 1 else None
            if id in self._steps:
                raise ValueError(f"step type `{id}` is declared twice")
            self._steps[id] = (fn, description, config)
            return fn

        return register

    def describe(self):
        """`(id, description, schema JSON text)` per step type."""
        out = []
        for id, (_, description, config) in self._steps.items():
            schema = schema_of(config) if is_config_type(config) else {}
            out.append((id, description, json.dumps(schema)))
        return out

    def run(self, ctx, config_text):
        """Runs one step; returns an `Outcome` or raises `ConfigError`,
        `StepFailed` or `LookupError` (an unknown step type)."""
        entry = self._steps.get(ctx.step_type)
        if entry is None:
            raise LookupError(ctx.step_type)
        fn, _, config = entry
        if is_config_type(config):
            cfg = decode(config, config_text)
        else:
            try:
                cfg = json.loads(config_text)
            except ValueError as e:
                raise ConfigError(None, f"the configuration is not JSON: {e}") from None
        result = fn(ctx, cfg)
        if result is None:
            return Outcome()
        if isinstance(result, dict):
            return Outcome(outputs={str(k): str(v) for k, v in result.items()})
        return result

    def component(self):
        """The class componentize-py exports as `Plugin`; None outside a
        component build (plain Python, where tests call `run` directly)."""
        plugin = self
        try:
            from componentize_py_types import Err
            from wit_world import exports
            from wit_world.imports import types
        except ImportError:
            return None

        class Component(exports.Plugin):
            def describe(self):
                return [types.StepType(id, d, s) for id, d, s in plugin.describe()]

            def run(self, context, config):
                ctx = Context(
                    engine=context.engine, pipeline=context.pipeline, run=context.run,
                    stage=context.stage, step_name=context.step_name,
                    step_type=context.step_type, attempt=context.attempt,
                    workspace=context.workspace,
                    env={kv.key: kv.value for kv in context.env},
                )
                try:
                    out = plugin.run(ctx, config)
                except LookupError:
                    raise Err(types.StepError_UnknownStepType(context.step_type))
                except ConfigError as e:
                    raise Err(types.StepError_InvalidConfig(types.ConfigError(e.field, e.message)))
                except (StepFailed, HostError) as e:
                    raise Err(types.StepError_Failed(str(e)))
                return types.Outcome(
                    [types.KeyValue(k, v) for k, v in out.outputs.items()], out.summary
                )

        return Component
