// Step configs: decoding `with:` against a JSON Schema (the subset step
// configs use), with errors that name the field (`commits[1]`, `env.PATH`).
// No imports of the host: this file also runs under plain Node for tests.

/** The step's `with:` does not fit its schema (WIT `step-error.invalid-config`). */
export class ConfigError extends Error {
  constructor(field, message) {
    super(field ? `${field}: ${message}` : message);
    this.field = field;
    this.detail = message;
  }
}

function kind(v) {
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  if (typeof v === "boolean") return "a boolean";
  if (typeof v === "number") return "a number";
  if (typeof v === "string") return "a string";
  return "a map";
}

const join = (path, key) => (path ? `${path}.${key}` : key);

function check(schema, value, path) {
  if (!schema || typeof schema !== "object") return;
  if (schema.anyOf) {
    const errors = [];
    for (const s of schema.anyOf) {
      try { check(s, value, path); return; } catch (e) { errors.push(e); }
    }
    throw errors.find((e) => e.field !== path) ?? errors[0];
  }
  if (schema.enum && !schema.enum.some((e) => e === value)) {
    throw new ConfigError(path, `expected one of ${schema.enum.map((e) => JSON.stringify(e)).join(", ")}, found ${JSON.stringify(value)}`);
  }
  const types = schema.type === undefined ? [] : [].concat(schema.type);
  if (types.length) {
    const fits = types.some((t) =>
      (t === "object" && kind(value) === "a map") ||
      (t === "array" && Array.isArray(value)) ||
      (t === "string" && typeof value === "string") ||
      (t === "boolean" && typeof value === "boolean") ||
      (t === "number" && typeof value === "number") ||
      (t === "integer" && Number.isInteger(value)) ||
      (t === "null" && value === null));
    if (!fits) {
      const want = types.map((t) => ({ object: "a map", array: "a list", integer: "a whole number" })[t] ?? `a ${t}`).join(" or ");
      throw new ConfigError(path, `expected ${want}, found ${kind(value)}`);
    }
  }
  if (kind(value) === "a map") {
    const props = schema.properties ?? {};
    for (const name of schema.required ?? []) {
      if (!(name in value)) throw new ConfigError(join(path, name), `missing setting \`${name}\``);
    }
    for (const [k, v] of Object.entries(value)) {
      if (k in props) check(props[k], v, join(path, k));
      else if (schema.additionalProperties === false) {
        throw new ConfigError(join(path, k), `unknown setting \`${k}\`; expected one of ${Object.keys(props).join(", ")}`);
      } else if (typeof schema.additionalProperties === "object") check(schema.additionalProperties, v, join(path, k));
    }
  }
  if (Array.isArray(value) && schema.items) value.forEach((v, i) => check(schema.items, v, `${path}[${i}]`));
}

/** Parses the JSON text of `with:` and checks it against `schema`; fills in `default`s. */
export function decode(schema, text) {
  let value;
  try { value = JSON.parse(text); } catch (e) {
    throw new ConfigError(undefined, `the configuration is not JSON: ${e.message}`);
  }
  if (kind(value) !== "a map") throw new ConfigError(undefined, `expected a map, found ${kind(value)}`);
  check(schema, value, "");
  for (const [k, p] of Object.entries(schema.properties ?? {})) {
    if (!(k in value) && p && "default" in p) value[k] = p.default;
  }
  return value;
}
