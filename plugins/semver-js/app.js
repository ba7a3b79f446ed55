// A step plugin in JavaScript: the next semantic version from conventional commits.
import { log } from "arkline:step/log@0.1.0";

const SCHEMA = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  type: "object",
  additionalProperties: false,
  required: ["current", "commits"],
  properties: {
    current: { type: "string", description: "The current version, `MAJOR.MINOR.PATCH`." },
    commits: { type: "array", items: { type: "string" }, description: "Commit messages since it." },
  },
};

function bump(current, commits) {
  const m = /^v?(\d+)\.(\d+)\.(\d+)$/.exec(current);
  if (!m) return null;
  let [major, minor, patch] = m.slice(1).map(Number);
  let level = "none";
  for (const c of commits) {
    const head = c.split("\n")[0];
    if (/^\w+(\(.*\))?!:/.test(head) || c.includes("BREAKING CHANGE")) { level = "major"; break; }
    if (/^feat(\(.*\))?:/.test(head)) level = "minor";
    else if (/^(fix|perf)(\(.*\))?:/.test(head) && level === "none") level = "patch";
  }
  if (level === "major") { major += 1; minor = 0; patch = 0; }
  else if (level === "minor") { minor += 1; patch = 0; }
  else if (level === "patch") { patch += 1; }
  return { level, next: `${major}.${minor}.${patch}` };
}

export const plugin = {
  describe() {
    return [{ id: "bump", description: "The next semantic version from conventional commits", configSchema: JSON.stringify(SCHEMA) }];
  },
  run(context, config) {
    if (context.stepType !== "bump") throw { tag: "unknown-step-type", val: context.stepType };
    let cfg;
    try { cfg = JSON.parse(config); } catch (e) {
      throw { tag: "invalid-config", val: { field: undefined, message: `not JSON: ${e}` } };
    }
    if (!Array.isArray(cfg.commits)) throw { tag: "invalid-config", val: { field: "commits", message: "expected a list of strings" } };
    const out = bump(String(cfg.current ?? ""), cfg.commits);
    if (!out) throw { tag: "invalid-config", val: { field: "current", message: `\`${cfg.current}\` is not MAJOR.MINOR.PATCH` } };
    log("info", `${cfg.commits.length} commits: ${out.level} bump`, []);
    return { outputs: [{ key: "version", value: out.next }, { key: "level", value: out.level }], summary: `${cfg.current} → ${out.next}` };
  },
};
