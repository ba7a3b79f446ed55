"""The SDK's config schemas and decoding, in plain CPython (no component)."""

import sys
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

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
