"""The step's tests, in plain CPython: `python3 -m unittest discover -s tests`."""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import plugin  # noqa: E402
from arkline_sdk import ConfigError, Context, StepFailed  # noqa: E402


def context(step_type="hello"):
    return Context("test", "p", 1, "s", step_type, step_type, 1, "/workspace", {})


class Hello(unittest.TestCase):
    def test_greets(self):
        out = plugin.run(context(), '{"name": "world", "shout": true}')
        self.assertEqual(out.outputs, {"greeting": "HELLO, WORLD!"})

    def test_config_errors_name_the_field(self):
        with self.assertRaises(ConfigError) as e:
            plugin.run(context(), '{"name": 3}')
        self.assertEqual(e.exception.field, "name")

    def test_a_blank_name_fails(self):
        with self.assertRaises(StepFailed):
            plugin.run(context(), '{"name": " "}')


if __name__ == "__main__":
    unittest.main()
