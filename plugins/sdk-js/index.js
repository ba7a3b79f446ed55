// arkline-sdk for JavaScript: write arkline step plugins in JavaScript,
// built into components by componentize-js against arkline's WIT world
// (arkline:step@0.1.0, the version of this SDK).
//
//   import { Plugin, StepFailed, log } from "../sdk-js/index.js";
//   const steps = new Plugin();
//   steps.step("greet", "Say hello", {
//     type: "object", additionalProperties: false, required: ["name"],
//     properties: { name: { type: "string", description: "Who to greet." } },
//   }, (ctx, cfg) => {
//     log.info(`greeting ${cfg.name}`);
//     return { greeting: `Hello, ${cfg.name}!` };
//   });
//   export const plugin = steps.component();   // what componentize-js exports

import { log as witLog } from "arkline:step/log@0.1.0";
import { run as witRun } from "arkline:step/process@0.1.0";
import { send as witSend } from "arkline:step/http@0.1.0";
import { get as witGet, put as witPut, remove as witRemove } from "arkline:step/cache@0.1.0";
import { call as witCall } from "arkline:step/host-call@0.1.0";
import { ConfigError, decode } from "./config.js";

export { ConfigError, decode };

/** The host API this SDK speaks. */
export const HOST_API = "arkline:step@0.1.0";

/** Throw it to fail the step with a message (WIT `step-error.failed`). */
export class StepFailed extends Error {}

/** A capability call was refused or failed; `kind` is the WIT `host-error` case:
 * `denied`, `invalid-argument`, `timeout`, `too-large` or `failed`. */
export class HostError extends Error {
  constructor(kind, message) {
    super(message ?? kind);
    this.kind = kind;
  }
}

function host(fn) {
  try {
    return fn();
  } catch (e) {
    // componentize-js throws a `result`'s error as `{ payload: { tag, val } }`.
    const err = e?.payload ?? e;
    if (err && typeof err.tag === "string") throw new HostError(err.tag, err.val);
    throw e;
  }
}

const pairs = (obj) => Object.entries(obj ?? {}).map(([key, value]) => ({ key, value: String(value) }));

/** The step log: `log.info("built", { target: "x86_64" })`. */
export const log = Object.fromEntries(
  ["trace", "debug", "info", "warn", "error"].map((level) => [
    level,
    (message, fields) => witLog(level, String(message), pairs(fields)),
  ]),
);

/** Runs a granted program; returns `{ code, signal, timedOut, stdout, stderr, … }`. */
export function runProcess(program, args = [], opts = {}) {
  const out = host(() => witRun({
    program, args: args.map(String), env: pairs(opts.env), cwd: opts.cwd,
    stdin: opts.stdin, timeoutMs: opts.timeoutMs === undefined ? undefined : BigInt(opts.timeoutMs),
    streamToLog: opts.streamToLog ?? true,
  }));
  const s = out.status;
  return {
    code: s.tag === "exited" ? s.val : undefined,
    signal: s.tag === "signaled" ? s.val : undefined,
    timedOut: s.tag === "timed-out",
    stdout: out.stdout, stderr: out.stderr,
    stdoutTruncated: out.stdoutTruncated, stderrTruncated: out.stderrTruncated,
  };
}

/** Sends an HTTP request to a granted host; returns `{ status, headers, body, text() }`. */
export function httpSend(method, url, opts = {}) {
  const body = typeof opts.body === "string" ? new TextEncoder().encode(opts.body) : opts.body;
  const r = host(() => witSend({
    method: method.toUpperCase(), url, headers: pairs(opts.headers), body,
    timeoutMs: opts.timeoutMs === undefined ? undefined : BigInt(opts.timeoutMs),
    followRedirects: opts.followRedirects ?? true,
  }));
  return {
    status: r.status,
    headers: Object.fromEntries(r.headers.map((kv) => [kv.key, kv.value])),
    body: r.body,
    text: () => new TextDecoder().decode(r.body),
  };
}

/** The engine's blob cache. */
export const cache = {
  get: (key) => host(() => witGet(key)),
  put: (key, value) => host(() => witPut(key, value)),
  remove: (key) => host(() => witRemove(key)),
};

/** A named call into the host's native plugins. */
export function hostCall(name, payload = new Uint8Array()) {
  const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  return host(() => witCall(name, bytes));
}

/** The steps of one biz. */
export class Plugin {
  #steps = new Map();

  /** Declares a step type: `run(ctx, cfg)` gets `with:` checked against `schema`
   * (a JSON Schema object) and returns outputs (an object), `{ outputs, summary }`, or nothing. */
  step(id, description, schema, run) {
    if (this.#steps.has(id)) throw new Error(`step type \`${id}\` is declared twice`);
    this.#steps.set(id, { description, schema, run });
    return this;
  }

  /** The object componentize-js exports as `plugin`. */
  component() {
    const steps = this.#steps;
    return {
      describe() {
        return [...steps].map(([id, s]) => ({
          id, description: s.description,
          configSchema: JSON.stringify({ $schema: "https://json-schema.org/draft/2020-12/schema", ...s.schema }),
        }));
      },
      run(context, config) {
        const s = steps.get(context.stepType);
        if (!s) throw { tag: "unknown-step-type", val: context.stepType };
        const ctx = { ...context, env: Object.fromEntries(context.env.map((kv) => [kv.key, kv.value])) };
        let out;
        try {
          out = s.run(ctx, decode(s.schema, config));
        } catch (e) {
          if (e instanceof ConfigError) throw { tag: "invalid-config", val: { field: e.field, message: e.detail } };
          if (e instanceof StepFailed || e instanceof HostError) throw { tag: "failed", val: e.message };
          throw { tag: "failed", val: String(e?.stack ?? e) };
        }
        const outputs = out && "outputs" in out ? out.outputs : out ?? {};
        return { outputs: pairs(outputs), summary: out?.summary };
      },
    };
  }
}
