// The SDK's config decoding, under plain Node (no component).
import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, decode } from "../config.js";

const schema = {
  type: "object", additionalProperties: false, required: ["name"],
  properties: {
    name: { type: "string" },
    tags: { type: "array", items: { type: "string" } },
    env: { type: "object", additionalProperties: { type: "string" } },
    level: { enum: ["low", "high"], default: "low" },
    port: { type: "integer" },
  },
};

test("a good config, with defaults", () => {
  assert.deepEqual(decode(schema, '{"name": "a", "tags": ["x"]}'), { name: "a", tags: ["x"], level: "low" });
});

test("errors name the field", () => {
  const cases = {
    '{"tags": []}': ["name", "missing setting `name`"],
    '{"name": "a", "nmae": 1}': ["nmae", "unknown setting `nmae`; expected one of"],
    '{"name": "a", "tags": ["x", 3]}': ["tags[1]", "expected a string, found a number"],
    '{"name": "a", "env": {"PATH": false}}': ["env.PATH", "expected a string, found a boolean"],
    '{"name": "a", "port": 1.5}': ["port", "expected a whole number, found a number"],
    '{"name": "a", "level": "mid"}': ["level", 'expected one of "low", "high"'],
    "[1]": [undefined, "expected a map, found a list"],
    "nope": [undefined, "not JSON"],
  };
  for (const [text, [field, message]] of Object.entries(cases)) {
    assert.throws(() => decode(schema, text), (e) => {
      assert.ok(e instanceof ConfigError, text);
      assert.equal(e.field, field, text);
      assert.ok(e.detail.includes(message), `${text}: ${e.detail}`);
      return true;
    });
  }
});
