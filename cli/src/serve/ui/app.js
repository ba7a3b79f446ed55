// arkline's dashboard: renders from the admin API (`/api/v1`) and follows
// changes with its watches (server-sent events). No framework, no build step:
// every text goes into the page through `textContent` (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
let me = null; // GET /api/v1/whoami
let closers = []; // event sources of the current view

/** An element: el("td", {class: "x"}, "text", child…). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const seg = encodeURIComponent;

async function api(path, options = {}) {
  const headers = { "X-Arkline-Request": "ui", ...(options.headers || {}) };
  const response = await fetch("/api/v1" + path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) { showSignIn(); throw new Error("signed out"); }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error((body && body.message) || response.statusText);
  return body;
}

/** Follows `path?watch=true` (SSE): onEvent(type, object). */
function watch(path, onEvent) {
  const source = new EventSource("/api/v1" + path + (path.includes("?") ? "&" : "?") + "watch=true");
  for (const type of ["ADDED", "MODIFIED", "DELETED"]) {
    source.addEventListener(type, (e) => onEvent(type, JSON.parse(e.data)));
  }
  source.addEventListener("ERROR", () => { source.close(); setTimeout(route, 1000); });
  // Closed for good (401 after sign-out, 410, the server gone): say so.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) notice("Live updates stopped: reload the page.");
  });
  closers.push(() => source.close());
  return source;
}

const canWrite = () => me && me.access === "write";

function phase(p) { return el("span", { class: "phase " + p }, p); }

function duration(from, to) {
  if (!from) return "";
  const ms = (to ? new Date(to) : new Date()) - new Date(from);
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
}

function crumbs(...parts) {
  const nav = $("crumbs");
  nav.replaceChildren(...parts.flatMap((p, i) => [i ? " / " : "", p[1] ? el("a", { href: p[1] }, p[0]) : p[0]]));
}

function view(...children) {
  $("signin").hidden = true;
  $("view").replaceChildren(...children);
}

function notice(text) {
  if (!document.getElementById("notice")) {
    $("view").prepend(el("p", { id: "notice", class: "error", role: "status" }, text));
  }
}

function showSignIn() {
  $("view").replaceChildren();
  $("signin").hidden = false;
  $("signin-error").hidden = !location.search.includes("error=token");
  $("token").focus();
}

// ---- pages ----

async function enginesPage(nav) {
  crumbs(["engines"]);
  const engines = await api("/engines");
  if (nav !== navigation) return; // a newer navigation owns the page
  view(
    el("h1", {}, "Engines"),
    el("div", { class: "scroll" }, el("table", { id: "engines" },
      el("thead", {}, el("tr", {}, el("th", {}, "Engine"), el("th", {}, "Bizes"), el("th", {}, "Pipelines"))),
      el("tbody", {}, engines.map((e) => el("tr", { "data-engine": e.name },
        el("td", {}, el("a", { href: `#/engines/${seg(e.name)}` }, e.name)),
        el("td", {}, e.bizes), el("td", {}, e.pipelines)))))),
  );
}

async function enginePage(nav, engine) {
  crumbs(["engines", "#/"], [engine]);
  const base = `/engines/${seg(engine)}`;
  const [bizes, pipelines] = await Promise.all([api(base + "/bizes"), api(base + "/pipelines")]);
  const runs = new Map();
  const rows = el("tbody", { id: "executions" });
  const filter = el("select", { "aria-label": "Phase", onchange: () => draw() },
    ["all", "Queued", "Running", "Succeeded", "Failed", "Aborted"].map((p) => el("option", { value: p }, p)));
  const draw = () => {
    const list = [...runs.values()]
      .filter((x) => filter.value === "all" || x.status.phase === filter.value)
      .sort((a, b) => (b.metadata.created || "").localeCompare(a.metadata.created || "") || b.spec.run - a.spec.run);
    rows.replaceChildren(...list.map((x) => el("tr", { "data-execution": x.metadata.name },
      el("td", {}, el("a", { href: `#/engines/${seg(engine)}/executions/${seg(x.metadata.name)}` }, x.metadata.name)),
      el("td", {}, phase(x.status.phase)),
      el("td", {}, duration(x.status.started, x.status.finished)),
      el("td", { class: "wide" }, x.spec.trigger), el("td", { class: "wide" }, (x.spec.commit || "").slice(0, 12)))));
  };
  const run = async (name) => {
    try {
      const x = await api(`${base}/pipelines/${seg(name)}/executions`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
      location.hash = `#/engines/${seg(engine)}/executions/${seg(x.metadata.name)}`;
    } catch (e) { alert(e.message); }
  };
  if (nav !== navigation) return; // a newer navigation owns the page
  view(
    el("h1", {}, engine),
    el("h2", {}, "Pipelines"),
    el("div", { class: "scroll" }, el("table", { id: "pipelines" },
      el("thead", {}, el("tr", {}, el("th", {}, "Pipeline"), el("th", {}, "Stages"), el("th", {}, "Last"), el("th", {}, ""))),
      el("tbody", {}, pipelines.map((p) => el("tr", { "data-pipeline": p.metadata.name },
        el("td", {}, p.metadata.name),
        el("td", {}, (p.spec.stages || []).map((s) => s.name).join(" → ")),
        el("td", {}, p.status && p.status.last_state ? phase(p.status.last_state) : ""),
        el("td", {}, canWrite() ? el("button", { class: "run", onclick: () => run(p.metadata.name) }, "Run") : "")))))),
    el("h2", {}, "Executions ", filter),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Execution"), el("th", {}, "Phase"), el("th", {}, "Duration"),
        el("th", { class: "wide" }, "Trigger"), el("th", { class: "wide" }, "Commit"))),
      rows)),
    el("h2", {}, "Bizes"),
    el("div", { class: "scroll" }, el("table", { id: "bizes" },
      el("thead", {}, el("tr", {}, el("th", {}, "Biz"), el("th", {}, "Version"), el("th", {}, "State"),
        el("th", {}, "Leases"), el("th", { class: "wide" }, "Grants"), el("th", {}, ""))),
      el("tbody", {}, bizes.map((b) => el("tr", { "data-biz": `${b.name}@${b.version}` },
        el("td", {}, b.name), el("td", {}, b.version),
        el("td", { title: b.broken || "" }, b.state, b.broken ? el("small", { class: "error" }, " " + b.broken) : ""),
        el("td", {}, b.leases), el("td", { class: "wide" }, b.grants.join(", ")),
        el("td", {}, canWrite() ? [
          ["resolved", "deactivated"].includes(b.state)
            ? el("button", { class: "switch", onclick: () => bizAction(`${base}/bizes/${seg(b.name)}/switch`, "POST", JSON.stringify({ version: b.version })) }, "Activate") : "",
          " ",
          el("button", { class: "danger uninstall", onclick: () => confirm(`Uninstall ${b.name}@${b.version}? Running executions finish first.`)
            && bizAction(`${base}/bizes/${seg(b.name)}/${seg(b.version)}`, "DELETE") }, "Uninstall"),
        ] : "")))))),
    canWrite() ? el("form", { id: "install", onsubmit: (e) => { e.preventDefault(); install(e.target); } },
      el("label", { for: "ark" }, "Install a .ark "), el("input", { id: "ark", type: "file", accept: ".ark", required: true }),
      " ", el("label", { for: "grants" }, "grants "), el("input", { id: "grants", placeholder: "process=sh cache" }),
      " ", el("button", { type: "submit" }, "Install")) : "",
  );
  async function bizAction(path, method, body) {
    try {
      await api(path, { method, body, headers: body ? { "Content-Type": "application/json" } : {} });
      route();
    } catch (e) { alert(e.message); }
  }
  async function install(form) {
    const file = form.querySelector("#ark").files[0];
    const grants = form.querySelector("#grants").value.split(/\s+/).filter(Boolean);
    const query = new URLSearchParams(grants.map((g) => ["grant", g]));
    query.append("wait", "false");
    try {
      await api(`${base}/bizes?${query}`, { method: "POST", headers: { "Content-Type": "application/vnd.arkline.ark" }, body: file });
      route();
    } catch (e) { alert(e.message); }
  }
  watch(base + "/executions", (type, x) => {
    if (type === "DELETED") runs.delete(x.metadata.name); else runs.set(x.metadata.name, x);
    draw();
  });
}

/** Stages and steps: from the pipeline (so steps not started show) with
 * the status laid over it (matrix cells come from the status). */
function graphOf(x) {
  const status = new Map((x.status.stages || []).map((s) => [s.name, s]));
  const stages = (x.spec.pipeline_spec.stages || []).map((stage) => {
    const st = status.get(stage.name);
    const steps = new Map((st ? st.steps : []).map((s) => [s.name, s]));
    const out = [];
    for (const step of stage.steps || []) {
      const cells = [...steps.values()].filter((s) => s.name === step.name || s.name.startsWith(step.name + " ("));
      const extra = { needs: step.needs || [], gate: step.approval || null };
      if (cells.length) cells.forEach((c) => { out.push({ ...c, ...extra }); steps.delete(c.name); });
      else out.push({ name: step.name, phase: "Waiting", attempts: 0, ...extra });
    }
    out.push(...steps.values());
    return { name: stage.name, phase: st ? st.phase : "Waiting", steps: out };
  });
  if ((x.status.finally || []).length) stages.push({ name: "finally", phase: "", steps: x.status.finally });
  return stages;
}

async function executionPage(nav, engine, name, step) {
  const base = `/engines/${seg(engine)}`;
  crumbs(["engines", "#/"], [engine, `#/engines/${seg(engine)}`], [name]);
  let x = await api(`${base}/executions/${seg(name)}`);
  const head = el("div");
  const graph = el("div", { class: "graph", id: "graph" });
  const logBox = el("div");
  const abort = async () => {
    try { await api(`${base}/executions/${seg(name)}/abort`, { method: "POST" }); } catch (e) { alert(e.message); }
  };
  const draw = () => {
    head.replaceChildren(
      el("h1", {}, name, " ", phase(x.status.phase)),
      el("div", { class: "kv" },
        el("span", { class: "muted" }, "pipeline"), el("span", {}, x.spec.pipeline),
        el("span", { class: "muted" }, "trigger"), el("span", {}, x.spec.trigger),
        el("span", { class: "muted" }, "duration"), el("span", {}, duration(x.status.started, x.status.finished)),
        x.spec.commit ? [el("span", { class: "muted" }, "commit"), el("span", {}, x.spec.commit)] : null,
        x.status.reason ? [el("span", { class: "muted" }, "reason"), el("span", {}, x.status.reason)] : null),
      canWrite() && !["Succeeded", "Failed", "Aborted"].includes(x.status.phase)
        ? el("p", {}, el("button", { class: "danger", id: "abort", onclick: abort }, "Abort")) : "",
    );
    graph.replaceChildren(...graphOf(x).map((stage) => el("section", { class: "stage", "aria-label": "stage " + stage.name },
      el("h3", {}, stage.name, " ", stage.phase ? phase(stage.phase) : ""),
      stage.steps.map((s) => el("button", {
        class: "step", "data-step": s.name, "data-phase": s.phase,
        "aria-label": `step ${s.name}: ${s.phase}`,
        onclick: () => { location.hash = `#/engines/${seg(engine)}/executions/${seg(name)}/logs/${seg(s.name)}`; },
      }, s.name,
      el("small", {}, s.phase, s.attempts > 1 ? ` · attempt ${s.attempts}` : "",
        s.started ? " · " + duration(s.started, s.finished) : "",
        s.needs && s.needs.length ? " · needs " + s.needs.join(", ") : "")))))
    );
  };
  const details = el("div");
  const decide = async (step, decision) => {
    const comment = "decided on the dashboard";
    try {
      await api(`${base}/executions/${seg(name)}/approvals/${seg(step)}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ decision, comment }) });
    } catch (e) { alert(e.message); }
  };
  const drawDetails = () => {
    const gates = graphOf(x).flatMap((st) => st.steps).filter((s) => s.gate && s.phase === "Running");
    const outputs = Object.entries(x.status.outputs || {});
    const conditions = x.status.conditions || [];
    details.replaceChildren(...[
      gates.length ? el("section", { "aria-label": "approvals" }, el("h2", {}, "Waiting for approval"),
        gates.map((g) => el("p", {}, el("strong", {}, g.name), " ", g.gate.message || "",
          canWrite() ? [" ", el("button", { class: "approve", onclick: () => decide(g.name, "approve") }, "Approve"),
            " ", el("button", { class: "danger reject", onclick: () => decide(g.name, "reject") }, "Reject")] : ""))) : "",
      outputs.length ? [el("h2", {}, "Outputs"), el("div", { class: "scroll" }, el("table", { id: "outputs" },
        el("thead", {}, el("tr", {}, el("th", {}, "Step"), el("th", {}, "Output"), el("th", {}, "Value"))),
        el("tbody", {}, outputs.flatMap(([step, kv]) => Object.entries(kv).map(([k, v]) =>
          el("tr", {}, el("td", {}, step), el("td", {}, k), el("td", {}, v)))))))] : "",
      conditions.length ? [el("h2", {}, "Conditions"), el("ul", { id: "conditions" }, conditions.map((c) =>
        el("li", {}, `${c.type}=${c.status}`, c.reason ? ` (${c.reason})` : "", c.message ? `: ${c.message}` : "")))] : "",
    ].flat());
  };
  if (nav !== navigation) return; // a newer navigation owns the page
  view(head, el("h2", {}, "Stages"), graph, details, logBox);
  draw();
  drawDetails();
  watch(`${base}/executions?pipeline=${seg(x.spec.pipeline)}`, (type, changed) => {
    if (changed.metadata.name === name) { x = changed; draw(); drawDetails(); }
  });
  if (step) logBox.replaceChildren(logView(base, name, step));
}

/** ANSI SGR colours (bold and the basic 8 + bright) as spans. */
function ansi(text) {
  const out = [];
  let classes = [];
  const parts = text.split(/\x1b\[([0-9;]*)m/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      for (const code of part.split(";").map(Number)) {
        if (code === 0 || Number.isNaN(code)) classes = [];
        else classes.push("ansi-" + (code >= 90 && code <= 97 ? (code === 90 ? 90 : code - 60) : code));
      }
    } else if (part) {
      out.push(classes.length ? el("span", { class: classes.join(" ") }, part) : document.createTextNode(part));
    }
  });
  return out;
}

function logView(base, execution, step) {
  const lines = [];
  const pre = el("pre", { id: "log", tabindex: "0", "aria-label": `log of ${step}` });
  const status = el("span", { class: "muted", id: "log-status" }, "following…");
  let follow = true;
  const search = el("input", { type: "search", placeholder: "Search", "aria-label": "Search the log", oninput: () => {
    const q = search.value.toLowerCase();
    for (const l of pre.children) l.hidden = q !== "" && !l.dataset.text.includes(q);
  } });
  const pause = el("button", { onclick: () => { follow = !follow; pause.textContent = follow ? "Pause" : "Follow"; } }, "Pause");
  const download = el("button", { onclick: () => {
    const blob = new Blob([lines.join("\n") + "\n"], { type: "text/plain" });
    const a = el("a", { href: URL.createObjectURL(blob), download: `${execution}-${step}.log` });
    document.body.append(a); a.click(); a.remove();
  } }, "Download");
  const source = new EventSource(`/api/v1${base}/executions/${seg(execution)}/steps/${seg(step)}/logs?follow=true`);
  closers.push(() => source.close());
  let last = -1; // a reconnect sends the log again: keep each line once
  const cap = 100000;
  source.addEventListener("line", (e) => {
    const line = JSON.parse(e.data);
    if (line.seq <= last) return;
    last = line.seq;
    if (pre.childElementCount >= cap) {
      status.textContent = `showing the first ${cap} lines: download the whole log`;
      return;
    }
    const n = lines.length + 1;
    lines.push(line.message);
    const row = el("div", { class: "line " + line.source, id: "L" + n, "data-text": line.message.toLowerCase() },
      el("a", { href: `#L${n}`, onclick: (ev) => { ev.preventDefault(); history.replaceState(null, "", location.hash.split("#L")[0]); row.scrollIntoView(); } }, n),
      el("span", {}, ansi(line.message)));
    const q = search.value.toLowerCase();
    row.hidden = q !== "" && !row.dataset.text.includes(q);
    pre.append(row);
    if (follow) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", (e) => {
    source.close();
    status.textContent = "ended: " + JSON.parse(e.data).phase;
  });
  source.addEventListener("error", () => { if (source.readyState === EventSource.CLOSED) status.textContent = "disconnected"; });
  return el("section", { class: "log" },
    el("div", { class: "bar" }, el("strong", {}, step), status, search, pause, download), pre);
}

// ---- routing ----

let navigation = 0;

async function route() {
  const mine = ++navigation;
  for (const close of closers) close();
  closers = [];
  if (!me) {
    try { me = await api("/whoami"); } catch { return; }
    $("who").textContent = `${me.name} (${me.access})`;
    $("logout").hidden = me.name === "anonymous";
  }
  try {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "engines" && parts[2] === "executions" && parts[3]) {
      await executionPage(mine, parts[1], parts[3], parts[4] === "logs" ? parts[5] : undefined);
    } else if (parts[0] === "engines" && parts[1]) {
      await enginePage(mine, parts[1]);
    } else {
      await enginesPage(mine);
    }
  } catch (e) {
    if (e.message !== "signed out") view(el("p", { class: "error", role: "alert" }, e.message));
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", route);
