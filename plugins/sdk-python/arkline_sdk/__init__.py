"""arkline-sdk for Python: write arkline step plugins in Python.

A plugin declares its steps with a config dataclass each; the SDK turns the
dataclasses into the JSON Schemas `describe()` reports, decodes each step's
`with:` into its dataclass with errors that name the field, and wraps the
host's capabilities (`log`, `process`, `http`, `cache`, `host_call`) with the
error kinds of the Rust SDK. Built into a component by componentize-py
against arkline's WIT world (`arkline:step@0.1.0`, the version of this SDK)::

    from dataclasses import dataclass, field
    from arkline_sdk import Plugin, log

    plugin = Plugin()

    @dataclass
    class Greet:
        name: str = field(metadata={"description": "Who to greet."})
        shout: bool = False

    @plugin.step("greet", "Say hello")
    def greet(ctx, cfg: Greet):
        log.info(f"greeting {cfg.name}")
        return {"greeting": f"Hello, {cfg.name}!"}

    Plugin = plugin.component()   # what componentize-py exports
"""

from .config import ConfigError, decode, schema_of
from .errors import Denied, Failed, HostError, InvalidArgument, StepFailed, Timeout, TooLarge
from .plugin import Context, Outcome, Plugin
from . import cache, host_call, http, log, process

__version__ = "0.1.0"
#: The host API this SDK speaks.
HOST_API = "arkline:step@0.1.0"

__all__ = [
    "ConfigError", "Context", "Denied", "Failed", "HOST_API", "HostError", "InvalidArgument",
    "Outcome", "Plugin", "StepFailed", "Timeout", "TooLarge", "cache", "decode", "host_call",
    "http", "log", "process", "schema_of",
]
