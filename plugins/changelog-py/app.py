"""A step plugin in Python: renders a changelog from commit messages."""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["commits"],
    "properties": {
        "commits": {"type": "array", "items": {"type": "string"},
                    "description": "Commit subjects, newest first."},
        "title": {"type": "string", "description": "Heading of the changelog."},
    },
}

SECTIONS = [("feat", "Features"), ("fix", "Fixes"), ("perf", "Performance")]


def render(title, commits):
    groups = {}
    for subject in commits:
        kind, _, rest = subject.partition(":")
        kind = kind.split("(")[0].rstrip("!").strip()
        groups.setdefault(kind if rest else "other", []).append((rest or subject).strip())
    lines = [f"# {title}", ""]
    for kind, heading in SECTIONS + [("other", "Other")]:
        if groups.get(kind):
            lines.append(f"## {heading}")
            lines.extend(f"- {s}" for s in groups[kind])
            lines.append("")
    return "\n".join(lines)


class Plugin(exports.Plugin):
    def describe(self):
        return [types.StepType(id="changelog", description="Render a changelog from commit messages",
                               config_schema=json.dumps(SCHEMA))]

    def run(self, context, config):
        if context.step_type != "changelog":
            raise Err(types.StepError_UnknownStepType(context.step_type))
        try:
            cfg = json.loads(config)
        except ValueError as e:
            raise Err(types.StepError_InvalidConfig(types.ConfigError(None, f"not JSON: {e}")))
        commits = cfg.get("commits")
        if not isinstance(commits, list) or not all(isinstance(c, str) for c in commits):
            raise Err(types.StepError_InvalidConfig(types.ConfigError("commits", "expected a list of strings")))
        text = render(cfg.get("title", "Changelog"), commits)
        log.log(log.Level.INFO, f"{len(commits)} commits", [])
        return types.Outcome([types.KeyValue("changelog", text)], f"{len(commits)} commits")
