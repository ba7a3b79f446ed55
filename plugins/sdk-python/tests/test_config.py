"""The SDK's config schemas and decoding, in plain CPython (no component)."""

import sys
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, NotRequired, Optional, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arkline_sdk.config import ConfigError, decode, schema_of  # noqa: E402


@dataclass
class Inner:
    port: int


@dataclass
class Config:
    name: str = field(metadata={"description": "Who."})
    tags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    level: Literal["low", "high"] = "low"
    ratio: float = 1.0
    inner: Optional[Inner] = None


class Schemas(unittest.TestCase):
    def test_required_types_and_descriptions(self):
        s = schema_of(Config)
        self.assertEqual(s["required"], ["name"])
        self.assertFalse(s["additionalProperties"])
        self.assertEqual(s["properties"]["name"], {"type": "string", "description": "Who."})
        self.assertEqual(s["properties"]["tags"], {"type": "array", "items": {"type": "string"}})
        self.assertEqual(s["properties"]["level"], {"enum": ["low", "high"]})
        self.assertEqual(s["properties"]["inner"]["anyOf"][1], {"type": "null"})


class Decoding(unittest.TestCase):
    def test_a_good_config(self):
        c = decode(Config, '{"name": "a", "tags": ["x"], "inner": {"port": 8}, "ratio": 2}')
        self.assertEqual((c.name, c.tags, c.inner.port, c.ratio), ("a", ["x"], 8, 2.0))

    def test_errors_name_the_field(self):
        cases = {
            '{"tags": []}': ("name", "missing setting `name`"),
            '{"name": "a", "nmae": 1}': ("nmae", "unknown setting `nmae`; expected one of"),
            '{"name": "a", "tags": ["x", 3]}': ("tags[1]", "expected a string, found a number"),
            '{"name": "a", "env": {"PATH": false}}': ("env.PATH", "expected a string, found a boolean"),
            '{"name": "a", "inner": {"port": "80"}}': ("inner.port", "expected a whole number"),
            '{"name": "a", "level": "mid"}': ("level", "expected one of 'low', 'high'"),
            '[1]': (None, "expected a map, found a list"),
            'nope': (None, "not JSON"),
        }
        for text, (field_path, message) in cases.items():
            with self.assertRaises(ConfigError, msg=text) as e:
                decode(Config, text)
            self.assertEqual(e.exception.field, field_path, text)
            self.assertIn(message, e.exception.message, text)


if __name__ == "__main__":
    unittest.main()


class Target(TypedDict):
    host: Annotated[str, "Where to."]
    port: NotRequired[int]


class Deploy(TypedDict):
    """Deploys somewhere."""

    targets: list[Target]
    dry_run: NotRequired[Annotated[bool, "Only say what would change."]]


class TypedDicts(unittest.TestCase):
    def test_schema(self):
        s = schema_of(Deploy)
        self.assertEqual(s["required"], ["targets"])
        self.assertEqual(s["description"], "Deploys somewhere.")
        self.assertFalse(s["additionalProperties"])
        self.assertEqual(s["properties"]["dry_run"],
                         {"type": "boolean", "description": "Only say what would change."})
        target = s["properties"]["targets"]["items"]
        self.assertEqual(target["required"], ["host"])
        self.assertEqual(target["properties"]["host"], {"type": "string", "description": "Where to."})
        self.assertEqual(target["properties"]["port"], {"type": "integer"})

    def test_decoding_gives_the_dict_and_errors_name_the_field(self):
        cfg = decode(Deploy, '{"targets": [{"host": "a", "port": 22}]}')
        self.assertEqual(cfg, {"targets": [{"host": "a", "port": 22}]})
        for text, field_path, words in [
            ('{"targets": [{"host": "a"}, {"port": 1}]}', "targets[1].host", "missing setting `host`"),
            ('{"targets": [{"host": "a", "port": "22"}]}', "targets[0].port", "expected a whole number"),
            ('{"targets": [], "dryrun": true}', "dryrun", "unknown setting `dryrun`; expected one of targets, dry_run"),
            ('{}', "targets", "missing setting `targets`"),
        ]:
            with self.assertRaises(ConfigError, msg=text) as caught:
                decode(Deploy, text)
            self.assertEqual(caught.exception.field, field_path, text)
            self.assertIn(words, caught.exception.message, text)

    def test_a_step_declared_with_a_typeddict(self):
        import json
        from types import SimpleNamespace

        from arkline_sdk import Plugin

        steps = Plugin()

        @steps.step("deploy", "Deploys")
        def deploy(ctx, cfg: Deploy):
            return {"hosts": ",".join(t["host"] for t in cfg["targets"])}

        ((id, _, schema),) = steps.describe()
        self.assertEqual((id, json.loads(schema)["required"]), ("deploy", ["targets"]))
        ctx = SimpleNamespace(step_type="deploy")
        out = steps.run(ctx, '{"targets": [{"host": "a"}, {"host": "b"}]}')
        self.assertEqual(out.outputs, {"hosts": "a,b"})
        with self.assertRaises(ConfigError):
            steps.run(ctx, '{"targets": [{"hots": "a"}]}')
