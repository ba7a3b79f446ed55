// The step's tests under plain Node: `node --test test/`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { greeting } from "../greeting.js";
import { ConfigError, decode } from "../sdk/config.js";

test("greets", () => {
  assert.equal(greeting("world", true), "HELLO, WORLD!");
});

test("a config error names its field", () => {
  const schema = { type: "object", required: ["name"], properties: { name: { type: "string" } } };
  assert.throws(() => decode(schema, '{"name": 3}'), (e) => e instanceof ConfigError && e.field === "name");
});
