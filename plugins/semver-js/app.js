// A step plugin in JavaScript: the next semantic version from conventional commits.
import { ConfigError, HostError, Plugin, StepFailed, log, runProcess } from "./sdk/index.js"; // plugins/sdk-js, put there by build.sh

const steps = new Plugin();

/** The release level the commits call for, and the version it gives. */
export function bump(major, minor, patch, commits) {
  let level = "none";
  for (const c of commits) {
    const head = c.split("\n")[0];
    if (/^\w+(\(.*\))?!:/.test(head) || c.includes("BREAKING CHANGE")) { level = "major"; break; }
    if (/^feat(\(.*\))?:/.test(head)) level = "minor";
    else if (/^(fix|perf)(\(.*\))?:/.test(head) && level === "none") level = "patch";
  }
  if (level === "major") return { level, next: `${major + 1}.0.0` };
  if (level === "minor") return { level, next: `${major}.${minor + 1}.0` };
  if (level === "patch") return { level, next: `${major}.${minor}.${patch + 1}` };
  return { level, next: `${major}.${minor}.${patch}` };
}

/** The commit messages of `range`, read with `git log` in the workspace
 * through the `process` capability (which the engine must grant: `process=git`). */
function gitMessages(range) {
  let out;
  try {
    out = runProcess("git", ["log", "--format=%B%x1e", range, "--"], { streamToLog: false });
  } catch (e) {
    if (e instanceof HostError && e.kind === "denied") {
      throw new StepFailed(`\`range\` reads commits with git, which this biz may not run (${e.kind}): ${e.message}`);
    }
    throw e;
  }
  if (out.code !== 0) {
    throw new StepFailed(`git log ${range}: ${new TextDecoder().decode(out.stderr).trim()}`);
  }
  return new TextDecoder().decode(out.stdout).split("\x1e").map((m) => m.trim()).filter((m) => m !== "");
}

steps.step("bump", "The next semantic version from conventional commits", {
  type: "object",
  additionalProperties: false,
  required: ["current"],
  properties: {
    current: { type: "string", description: "The current version, `MAJOR.MINOR.PATCH` (a leading `v` is allowed)." },
    commits: { type: "array", items: { type: "string" }, description: "Commit messages since it." },
    range: { type: "string", description: "Read the commit messages with `git log` of this range (`v1.4.2..HEAD`) in the workspace instead (needs `process: git`)." },
  },
}, (ctx, cfg) => {
  const m = /^v?(\d+)\.(\d+)\.(\d+)$/.exec(cfg.current);
  if (!m) throw new ConfigError("current", `\`${cfg.current}\` is not MAJOR.MINOR.PATCH`);
  const [major, minor, patch] = m.slice(1).map(Number);
  const commits = cfg.commits ?? (cfg.range === undefined ? [] : gitMessages(cfg.range));
  const out = bump(major, minor, patch, commits);
  log.info(`${commits.length} commits: ${out.level} bump`, { from: cfg.current, to: out.next });
  return { outputs: { version: out.next, level: out.level }, summary: `${cfg.current} → ${out.next}` };
});

// What componentize-js exports.
export const plugin = steps.component();
