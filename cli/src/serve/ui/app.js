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

/** Redraws with `draw()` and gives the focus back to the element of the same
 * `data-<key>` if it had it (a live redraw replaces the focused node). */
function keepingFocus(key, draw) {
  const had = document.activeElement && document.activeElement.closest(`[data-${key}]`);
  const value = had && had.dataset[key];
  draw();
  if (value === undefined || value === null) return;
  const again = [...document.querySelectorAll(`#view [data-${key}]`)].find((n) => n.dataset[key] === value);
  const target = again && (again.matches("[data-nav]") ? again : again.querySelector("[data-nav]"));
  if (target) target.focus({ preventScroll: true });
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
        el("td", {}, el("a", { href: `#/engines/${seg(e.name)}`, "data-nav": true }, e.name)),
        el("td", {}, e.bizes), el("td", {}, e.pipelines)))))),
    el("p", {}, el("a", { href: "#/metrics", "data-nav": true }, "Metrics"), " · ",
      el("span", { class: "muted" }, "press ? for keyboard shortcuts")),
  );
}

/** What starts a pipeline, in a few words. */
function triggers(spec) {
  const list = (spec.triggers || []).map((t) => {
    if (t.type === "cron") return `cron ${t.schedule}`;
    if (t.type === "webhook") return "webhook" + ((t.events || []).length ? ` (${t.events.join(", ")})` : "");
    return t.type;
  });
  return list.length ? list.join(", ") : "manual";
}

/** The value typed into a param's field, as its type wants it; undefined
 * for an empty field (left out: the server applies the default, or says the
 * param is required). */
function paramValue(p, input) {
  if (p.type === "bool") return input.checked;
  const text = input.value.trim();
  if (!text) return undefined;
  if (p.type === "number") return Number(text);
  if (p.type === "array") return text.split(",").map((v) => v.trim());
  return input.value;
}

/** Asks for a pipeline's params in a dialog; resolves with them, or null. */
function askParams(pipeline) {
  const params = pipeline.spec.params || [];
  if (!params.length) return Promise.resolve({});
  return new Promise((resolve) => {
    const fields = params.map((p) => {
      const id = "param-" + p.name;
      const d = p.default;
      const input = p.type === "bool"
        ? el("input", { id, type: "checkbox", checked: d === true })
        : el("input", { id, type: p.type === "number" ? "number" : "text", step: p.type === "number" ? "any" : undefined,
          value: d === undefined ? "" : Array.isArray(d) ? d.join(", ") : String(d),
          required: d === undefined, placeholder: p.type === "array" ? "a, b, c (comma-separated)" : undefined });
      return { p, input, row: el("p", {}, el("label", { for: id }, p.name, " ", el("small", { class: "muted" }, p.type || "string")),
        p.description ? el("small", { class: "muted block" }, p.description) : "", input) };
    });
    const dialog = el("dialog", { id: "run-dialog", "aria-label": `Run ${pipeline.metadata.name}` });
    let settled = false;
    const done = (value) => {
      if (settled) return;
      settled = true;
      if (dialog.open) dialog.close();
      dialog.remove();
      resolve(value);
    };
    dialog.append(el("form", { method: "dialog", onsubmit: (e) => {
      e.preventDefault();
      done(Object.fromEntries(fields.map((f) => [f.p.name, paramValue(f.p, f.input)]).filter(([, v]) => v !== undefined)));
    } },
    el("h2", {}, "Run ", pipeline.metadata.name),
    fields.map((f) => f.row),
    el("p", {}, el("button", { type: "submit", id: "run-submit" }, "Run"), " ",
      el("button", { type: "button", onclick: () => done(null) }, "Cancel"))));
    // Esc, or leaving the page, is a cancel.
    dialog.addEventListener("close", () => done(null));
    closers.push(() => done(null));
    document.body.append(dialog);
    dialog.showModal();
    (fields[0].input).focus();
  });
}

async function enginePage(nav, engine) {
  crumbs(["engines", "#/"], [engine]);
  const base = `/engines/${seg(engine)}`;
  const [bizes, pipelines] = await Promise.all([api(base + "/bizes"), api(base + "/pipelines")]);
  const runs = new Map();
  const rows = el("tbody", { id: "executions" });
  const filter = el("select", { id: "phase-filter", "aria-label": "Phase", onchange: () => draw() },
    ["all", "Queued", "Pending", "Running", "Succeeded", "Failed", "Aborted", "Cancelled"].map((p) => el("option", { value: p }, p)));
  const text = el("input", { id: "exec-filter", type: "search", "data-search": true, placeholder: "pipeline, trigger, branch, commit",
    "aria-label": "Filter executions by pipeline, trigger, branch or commit", oninput: () => draw() });
  const matches = (x) => {
    const q = text.value.trim().toLowerCase();
    if (!q) return true;
    return [x.metadata.name, x.spec.pipeline, x.spec.trigger, x.spec.event, x.spec.branch, x.spec.commit]
      .some((v) => v && String(v).toLowerCase().includes(q));
  };
  const draw = () => {
    const list = [...runs.values()]
      .filter((x) => (filter.value === "all" || x.status.phase === filter.value) && matches(x))
      .sort((a, b) => (b.metadata.created || "").localeCompare(a.metadata.created || "") || b.spec.run - a.spec.run);
    keepingFocus("execution", () => rows.replaceChildren(...list.map((x) => el("tr", { "data-execution": x.metadata.name },
      el("td", {}, el("a", { href: `#/engines/${seg(engine)}/executions/${seg(x.metadata.name)}`, "data-nav": true }, x.metadata.name)),
      el("td", {}, phase(x.status.phase)),
      el("td", {}, duration(x.status.started, x.status.finished)),
      el("td", { class: "wide" }, x.spec.trigger, x.spec.event && x.spec.event !== x.spec.trigger ? ` (${x.spec.event})` : ""),
      el("td", { class: "wide" }, x.spec.branch || ""),
      el("td", { class: "wide mono" }, (x.spec.commit || "").slice(0, 12))))));
  };
  const run = async (p) => {
    const params = await askParams(p);
    if (params === null) return;
    try {
      const x = await api(`${base}/pipelines/${seg(p.metadata.name)}/executions`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ params }) });
      location.hash = `#/engines/${seg(engine)}/executions/${seg(x.metadata.name)}`;
    } catch (e) { alert(e.message); }
  };
  const bizBody = el("tbody");
  const drawBizes = (list) => bizBody.replaceChildren(...list.map((b) => el("tr", { "data-biz": `${b.name}@${b.version}`, "data-state": b.state },
        el("td", {}, b.name), el("td", { title: `sha256 ${b.sha256}, API ${b.api_version}` }, b.version),
        el("td", { class: "state" }, b.state, b.state === "draining" ? el("small", { class: "muted" }, ` (${b.leases} running)`) : "",
          b.broken ? el("small", { class: "error" }, " " + b.broken) : ""),
        el("td", {}, b.leases),
        el("td", { class: "wide" }, (b.step_types || []).join(", ")),
        el("td", { class: "wide" }, b.grants.join(", ")),
        el("td", {}, canWrite() ? [
          ["resolved", "deactivated"].includes(b.state)
            ? el("button", { class: "switch", "aria-label": `Activate ${b.name}@${b.version}`,
              onclick: () => bizAction(`${base}/bizes/${seg(b.name)}/switch`, "POST", JSON.stringify({ version: b.version })) }, "Activate") : "",
          " ",
          b.state === "uninstalled" ? "" : el("button", { class: "danger uninstall", "aria-label": `Uninstall ${b.name}@${b.version}`,
            onclick: () => confirm(`Uninstall ${b.name}@${b.version}? Running executions finish first.`)
              && bizAction(`${base}/bizes/${seg(b.name)}/${seg(b.version)}`, "DELETE") }, "Uninstall"),
        ] : ""))));
  // A biz installing in the background, or draining: its row is looked at
  // again every second until it settles (only the bizes, not the page).
  let poll = null;
  const refreshBizes = async (list) => {
    if (nav !== navigation) return;
    drawBizes(list || await api(base + "/bizes"));
    clearTimeout(poll);
    if ([...bizBody.children].some((r) => ["installing", "draining"].includes(r.dataset.state))) {
      poll = setTimeout(() => refreshBizes().catch((e) => { if (nav === navigation) notice(e.message); }), 1000);
    }
  };
  closers.push(() => clearTimeout(poll));
  const last = (p) => {
    const st = p.status || {};
    if (!st.last_execution) return "";
    return [el("a", { href: `#/engines/${seg(engine)}/executions/${seg(st.last_execution)}` }, st.last_execution),
      " ", st.last_state ? phase(st.last_state) : ""];
  };
  if (nav !== navigation) return; // a newer navigation owns the page
  view(
    el("h1", {}, engine),
    el("h2", {}, "Pipelines"),
    el("div", { class: "scroll" }, el("table", { id: "pipelines" },
      el("thead", {}, el("tr", {}, el("th", {}, "Pipeline"), el("th", { class: "wide" }, "Triggers"),
        el("th", { class: "wide" }, "Stages"), el("th", {}, "Last run"), el("th", {}, ""))),
      el("tbody", {}, pipelines.map((p) => el("tr", { "data-pipeline": p.metadata.name },
        el("td", {}, p.metadata.name, p.spec.description ? el("small", { class: "muted block" }, p.spec.description) : ""),
        el("td", { class: "wide" }, triggers(p.spec)),
        el("td", { class: "wide" }, (p.spec.stages || []).map((s) => s.name).join(" → ")),
        el("td", {}, last(p)),
        el("td", {}, canWrite() ? el("button", { class: "run", "aria-label": `Run ${p.metadata.name}`, onclick: () => run(p) }, "Run") : "")))))),
    el("h2", {}, "Executions ", filter, " ", text),
    el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Execution"), el("th", {}, "Phase"), el("th", {}, "Duration"),
        el("th", { class: "wide" }, "Trigger"), el("th", { class: "wide" }, "Branch"), el("th", { class: "wide" }, "Commit"))),
      rows)),
    el("h2", {}, "Bizes"),
    el("div", { class: "scroll" }, el("table", { id: "bizes" },
      el("thead", {}, el("tr", {}, el("th", {}, "Biz"), el("th", {}, "Version"), el("th", {}, "State"),
        el("th", {}, "Leases"), el("th", { class: "wide" }, "Steps"), el("th", { class: "wide" }, "Grants"), el("th", {}, ""))),
      bizBody)),
    canWrite() ? el("form", { id: "install", onsubmit: (e) => { e.preventDefault(); install(e.target); } },
      el("label", { for: "ark" }, "Install a .ark "), el("input", { id: "ark", type: "file", accept: ".ark", required: true }),
      " ", el("label", { for: "grants" }, "grants "), el("input", { id: "grants", placeholder: "process=sh cache" }),
      " ", el("button", { type: "submit" }, "Install")) : "",
  );
  async function bizAction(path, method, body) {
    try {
      await api(path, { method, body, headers: body ? { "Content-Type": "application/json" } : {} });
      await refreshBizes();
    } catch (e) { alert(e.message); }
  }
  async function install(form) {
    const file = form.querySelector("#ark").files[0];
    const grants = form.querySelector("#grants").value.split(/\s+/).filter(Boolean);
    const query = new URLSearchParams(grants.map((g) => ["grant", g]));
    query.append("wait", "false");
    try {
      await api(`${base}/bizes?${query}`, { method: "POST", headers: { "Content-Type": "application/vnd.arkline.ark" }, body: file });
      form.reset();
      await refreshBizes();
    } catch (e) { alert(e.message); }
  }
  refreshBizes(bizes);
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

async function executionPage(nav, engine, name, step, anchor) {
  const base = `/engines/${seg(engine)}`;
  crumbs(["engines", "#/"], [engine, `#/engines/${seg(engine)}`], [name]);
  let x = await api(`${base}/executions/${seg(name)}`);
  const head = el("div");
  const graph = el("div", { class: "graph", id: "graph" });
  const logBox = el("div");
  const abort = async () => {
    try { await api(`${base}/executions/${seg(name)}/abort`, { method: "POST" }); } catch (e) { alert(e.message); }
  };
  const rerun = async () => {
    try {
      const again = await api(`${base}/executions/${seg(name)}/rerun`, { method: "POST" });
      location.hash = `#/engines/${seg(engine)}/executions/${seg(again.metadata.name)}`;
    } catch (e) { alert(e.message); }
  };
  const finished = () => ["Succeeded", "Failed", "Aborted", "Cancelled"].includes(x.status.phase);
  const item = (label, value) => value ? [el("span", { class: "muted" }, label), el("span", {}, value)] : null;
  const draw = () => {
    const labels = x.metadata.labels || {};
    const rerunOf = labels["arkline.dev/rerun-of"];
    head.replaceChildren(
      el("h1", {}, name, " ", phase(x.status.phase)),
      el("div", { class: "kv" },
        item("pipeline", x.spec.pipeline),
        item("trigger", x.spec.trigger + (x.spec.event && x.spec.event !== x.spec.trigger ? ` (${x.spec.event})` : "")),
        item("duration", duration(x.status.started, x.status.finished)),
        item("branch", x.spec.branch),
        item("commit", x.spec.commit),
        item("params", Object.keys(x.spec.params || {}).length ? JSON.stringify(x.spec.params) : ""),
        item("rerun of", rerunOf ? el("a", { href: `#/engines/${seg(engine)}/executions/${seg(rerunOf)}` }, rerunOf) : null),
        item("reason", x.status.reason)),
      canWrite() ? el("p", {}, finished()
        ? el("button", { id: "rerun", onclick: rerun }, "Rerun")
        : el("button", { class: "danger", id: "abort", onclick: abort }, "Abort")) : "",
    );
    keepingFocus("step", () => graph.replaceChildren(...graphOf(x).map((stage) => el("section", { class: "stage", "aria-label": "stage " + stage.name },
      el("h3", {}, stage.name, " ", stage.phase ? phase(stage.phase) : ""),
      stage.steps.map((s) => el("button", {
        class: "step", "data-step": s.name, "data-phase": s.phase, "data-nav": true,
        "data-needs": s.needs && s.needs.length ? JSON.stringify(s.needs) : undefined,
        "aria-label": `step ${s.name}: ${s.phase}` + (s.needs && s.needs.length ? `, needs ${s.needs.join(", ")}` : ""),
        onclick: () => { location.hash = `#/engines/${seg(engine)}/executions/${seg(name)}/logs/${seg(s.name)}`; },
      }, s.name,
      el("small", {}, s.phase, s.attempts > 1 ? ` · attempt ${s.attempts}` : "",
        s.started ? " · " + duration(s.started, s.finished) : "")))))
    ));
    edges(graph);
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
  if (step) {
    // A step that has ended: its log is read in one request, not followed.
    const ended = graphOf(x).flatMap((st) => st.steps).find((s) => s.name === step);
    const over = ended && ["Succeeded", "Failed", "Aborted", "Skipped", "Cancelled"].includes(ended.phase) && ended.phase;
    logBox.replaceChildren(logView(base, engine, name, step, anchor, over || null));
  }
  const redraw = () => edges(graph);
  window.addEventListener("resize", redraw);
  closers.push(() => window.removeEventListener("resize", redraw));
}

/** The `needs` edges of a drawn graph, as an SVG layer over it: from the
 * right side of each needed step (every cell of a matrix) to the left side
 * of the step that waits for it, or around the left side within a stage. */
function edges(graph) {
  const NS = "http://www.w3.org/2000/svg";
  graph.querySelector("svg.edges")?.remove();
  const box = graph.getBoundingClientRect();
  const at = (node) => {
    const r = node.getBoundingClientRect();
    const left = r.left - box.left + graph.scrollLeft;
    const top = r.top - box.top + graph.scrollTop;
    return { left, right: left + r.width, mid: top + r.height / 2 };
  };
  const nodes = [...graph.querySelectorAll(".step")];
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "edges");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("width", graph.scrollWidth);
  svg.setAttribute("height", graph.scrollHeight);
  for (const to of nodes.filter((n) => n.dataset.needs)) {
    const b = at(to);
    for (const need of JSON.parse(to.dataset.needs)) {
      for (const from of nodes.filter((n) => n.dataset.step === need || n.dataset.step.startsWith(need + " ("))) {
        const a = at(from);
        const d = a.right <= b.left
          ? `M${a.right},${a.mid} C${a.right + 24},${a.mid} ${b.left - 24},${b.mid} ${b.left},${b.mid}`
          : `M${a.left},${a.mid} C${a.left - 18},${a.mid} ${b.left - 18},${b.mid} ${b.left},${b.mid}`;
        const path = document.createElementNS(NS, "path");
        path.setAttribute("d", d);
        path.setAttribute("data-from", from.dataset.step);
        path.setAttribute("data-to", to.dataset.step);
        svg.append(path);
      }
    }
  }
  if (svg.childElementCount) graph.prepend(svg);
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

/** A step's log, live: numbered lines whose numbers are links to them
 * (`…/logs/STEP/L12`), ANSI colours, search, follow/pause, download. Lines
 * that arrive together are added to the page together. */
function logView(base, engine, execution, step, anchor, ended) {
  const pre = el("pre", { id: "log", tabindex: "0", "aria-label": `log of ${step}` });
  const status = el("span", { class: "muted", id: "log-status", role: "status" }, "live…");
  const here = `#/engines/${seg(engine)}/executions/${seg(execution)}/logs/${seg(step)}`;
  const wanted = anchor && /^L\d+$/.test(anchor) ? Number(anchor.slice(1)) : 0;
  let follow = !wanted;
  const search = el("input", { type: "search", placeholder: "Search", "aria-label": "Search the log", "data-search": true, oninput: () => {
    for (const l of pre.children) l.hidden = hides(l);
  } });
  const pause = el("button", { id: "log-follow", "aria-pressed": String(follow), onclick: () => {
    follow = !follow;
    pause.textContent = follow ? "Pause" : "Follow";
    pause.setAttribute("aria-pressed", String(follow));
    if (follow) pre.scrollTop = pre.scrollHeight;
  } }, follow ? "Pause" : "Follow");
  // The whole log as the server keeps it (however long the view is).
  const download = el("a", { class: "button", id: "log-download", download: `${execution}-${step}.log`,
    href: `/api/v1${base}/executions/${seg(execution)}/steps/${seg(step)}/logs?format=text` }, "Download");
  const select = (row) => {
    pre.querySelector(".line.selected")?.classList.remove("selected");
    row.classList.add("selected");
    row.scrollIntoView({ block: "center" });
  };
  let last = -1; // a reconnect sends the log again: keep each line once
  let n = 0;
  const cap = 100000;
  let batch = null;
  let pending = 0; // rows in `batch`
  let timer = null;
  let scrolling = false;
  let truncated = false;
  const hides = (row) => {
    const q = search.value.toLowerCase();
    return q !== "" && !row.dataset.text.includes(q);
  };
  // Following: the end of the log shown once per frame at most (reading
  // `scrollHeight` lays out what was added).
  const scrollSoon = () => {
    if (scrolling) return;
    scrolling = true;
    requestAnimationFrame(() => {
      scrolling = false;
      if (follow) pre.scrollTop = pre.scrollHeight;
    });
  };
  const flush = () => {
    clearTimeout(timer);
    if (!batch) return;
    const rows = batch;
    batch = null;
    pending = 0;
    // The search as it is now (it may have changed while these waited).
    for (const row of rows.children) row.hidden = hides(row);
    pre.append(rows);
    if (wanted && wanted <= n && !pre.querySelector(".line.selected")) {
      const row = document.getElementById("L" + wanted);
      if (row) select(row);
    }
    if (follow) scrollSoon();
  };
  const add = (line) => {
    if (line.seq <= last) return;
    last = line.seq;
    if (n >= cap) {
      truncated = true;
      status.textContent = `showing the first ${cap} lines: download the whole log`;
      return;
    }
    const i = ++n;
    const text = line.message.toLowerCase();
    const row = el("div", { class: "line " + line.source, id: "L" + i, "data-text": text },
      el("a", { href: `${here}/L${i}`, "aria-label": `line ${i}`, onclick: (ev) => {
        ev.preventDefault();
        history.replaceState(null, "", `${here}/L${i}`);
        select(row);
      } }, i),
      el("span", {}, ansi(line.message)));
    if (!batch) { batch = document.createDocumentFragment(); timer = setTimeout(flush, 30); }
    batch.append(row);
    // A stream's events may all be handled in one task (a big chunk of a
    // finished log): the first line at once, then every 2,000 lines, so the
    // page fills while it reads.
    if (i === 1 || ++pending >= 2000) flush();
  };
  closers.push(() => clearTimeout(timer));
  const end = (phase) => {
    flush();
    status.textContent = "ended: " + phase
      + (truncated ? ` (showing the first ${cap} lines: download the whole log)` : "");
  };
  const path = `${base}/executions/${seg(execution)}/steps/${seg(step)}/logs`;
  if (ended) {
    // Read at once (one JSON array parses far faster than one event per line).
    status.textContent = "loading…";
    // In slices of 5,000 lines, so the page shows the first ones at once.
    const feed = (lines, from) => {
      const to = Math.min(lines.length, from + 5000);
      for (let i = from; i < to; i++) add(lines[i]);
      flush();
      if (to < lines.length) {
        const next = setTimeout(() => feed(lines, to), 0);
        closers.push(() => clearTimeout(next));
      } else {
        end(ended);
      }
    };
    api(path).then((lines) => feed(lines, 0)).catch((e) => { status.textContent = e.message; });
  } else {
    const source = new EventSource(`/api/v1${path}?follow=true`);
    closers.push(() => source.close());
    source.addEventListener("line", (e) => add(JSON.parse(e.data)));
    source.addEventListener("end", (e) => { source.close(); end(JSON.parse(e.data).phase); });
    source.addEventListener("error", () => { if (source.readyState === EventSource.CLOSED) status.textContent = "disconnected"; });
  }
  return el("section", { class: "log" },
    el("div", { class: "bar" }, el("strong", {}, step), status, search, pause, download), pre);
}

/** Prometheus text (format 0.0.4) as samples {name, labels, value}. */
function samples(text) {
  const out = [];
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || line.startsWith("#")) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

/** The q-quantile of a histogram's cumulative buckets ({le, count}, sorted),
 * interpolated inside its bucket as Prometheus' histogram_quantile does. */
function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1].count : 0;
  if (!total) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return prevLe;
      const inBucket = b.count - prevCount;
      return inBucket ? prevLe + (b.le - prevLe) * ((rank - prevCount) / inBucket) : b.le;
    }
    prevLe = b.le; prevCount = b.count;
  }
  return prevLe;
}

function seconds(s) {
  if (s === null) return "";
  return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms" : s.toFixed(2) + " s";
}

async function metricsPage(nav) {
  crumbs(["engines", "#/"], ["metrics"]);
  const mine = new Set((await api("/engines")).map((e) => e.name));
  const body = el("div", { id: "metrics" });
  const stamp = el("span", { class: "muted" });
  const load = async () => {
    const response = await fetch("/metrics", { credentials: "same-origin" });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    const all = samples(await response.text()).filter((x) => !x.labels.engine || mine.has(x.labels.engine));
    const engines = [...mine].sort();
    const phases = [...new Set(all.filter((x) => x.name === "arkline_executions").map((x) => x.labels.phase))];
    const count = (name, engine, more = {}) => all.find((x) => x.name === name && x.labels.engine === engine
      && Object.entries(more).every(([k, v]) => x.labels[k] === v))?.value ?? 0;
    const histos = new Map();
    for (const x of all.filter((x) => x.name === "arkline_step_duration_seconds_bucket")) {
      const key = `${x.labels.engine}\u0000${x.labels.biz}`;
      if (!histos.has(key)) histos.set(key, { engine: x.labels.engine, biz: x.labels.biz, buckets: [] });
      histos.get(key).buckets.push({ le: x.labels.le === "+Inf" ? Infinity : Number(x.labels.le), count: x.value });
    }
    body.replaceChildren(
      el("h2", {}, "Executions by phase"),
      el("div", { class: "scroll" }, el("table", { id: "by-phase" },
        el("thead", {}, el("tr", {}, el("th", {}, "Engine"), phases.map((p) => el("th", {}, p)), el("th", {}, "Queue"))),
        el("tbody", {}, engines.map((e) => el("tr", { "data-engine": e }, el("td", {}, e),
          phases.map((p) => el("td", { "data-phase": p }, count("arkline_executions", e, { phase: p }))),
          el("td", { class: "queue" }, count("arkline_executions_queued", e))))))),
      el("h2", {}, "Step durations"),
      el("div", { class: "scroll" }, el("table", { id: "durations" },
        el("thead", {}, el("tr", {}, el("th", {}, "Engine"), el("th", {}, "Biz"), el("th", {}, "Steps"),
          el("th", {}, "p50"), el("th", {}, "p90"), el("th", {}, "p99"))),
        el("tbody", {}, [...histos.values()].sort((a, b) => (a.engine + a.biz).localeCompare(b.engine + b.biz)).map((h) => {
          h.buckets.sort((a, b) => a.le - b.le);
          return el("tr", { "data-biz": `${h.engine}/${h.biz}` }, el("td", {}, h.engine), el("td", {}, h.biz),
            el("td", { class: "steps" }, h.buckets[h.buckets.length - 1].count),
            [0.5, 0.9, 0.99].map((q) => el("td", {}, seconds(quantile(q, h.buckets)))));
        })))),
    );
    stamp.textContent = "updated " + new Date().toLocaleTimeString();
  };
  await load();
  if (nav !== navigation) return; // a newer navigation owns the page
  view(el("h1", {}, "Metrics ", stamp), body,
    el("p", { class: "muted" }, "From ", el("a", { href: "/metrics" }, "/metrics"), ", every 5 s."));
  const timer = setInterval(() => load().catch((e) => { if (nav === navigation) notice(e.message); }), 5000);
  closers.push(() => clearInterval(timer));
}

// ---- keyboard and theme ----

const SHORTCUTS = [
  ["g e", "engines"], ["g m", "metrics"], ["j / k", "next / previous row or step"],
  ["/", "search or filter"], ["f", "follow or pause the log"], ["?", "this help"], ["Esc", "close, leave a field"],
];

function help() {
  const open = document.getElementById("help");
  if (open) { open.close(); open.remove(); return; }
  const dialog = el("dialog", { id: "help", "aria-label": "Keyboard shortcuts" },
    el("h2", {}, "Keyboard shortcuts"),
    el("table", {}, el("tbody", {}, SHORTCUTS.map(([k, what]) => el("tr", {}, el("td", {}, el("kbd", {}, k)), el("td", {}, what))))),
    el("form", { method: "dialog" }, el("button", {}, "Close")));
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

let pendingG = null; // the timer of a `g` waiting for its second key
document.addEventListener("keydown", (e) => {
  // Ctrl or Meta alone are the browser's; Ctrl+Alt is AltGr on some layouts.
  if (((e.ctrlKey || e.metaKey) && !e.altKey) || (e.altKey && !e.ctrlKey)) return;
  if (e.key === "?" && document.getElementById("help")) { help(); return; }
  if (document.querySelector("dialog[open]")) return;
  const t = e.target;
  if (t && (["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName) || t.isContentEditable)) {
    if (e.key === "Escape") t.blur();
    return;
  }
  if (pendingG) {
    clearTimeout(pendingG);
    pendingG = null;
    const to = { e: "#/", m: "#/metrics" }[e.key];
    if (to) { e.preventDefault(); location.hash = to; return; }
    // Any other key: taken as if no `g` came before.
  }
  const go = (step) => {
    const items = [...document.querySelectorAll("#view [data-nav]")].filter((n) => n.offsetParent !== null);
    if (!items.length) return;
    const i = items.indexOf(document.activeElement);
    const next = items[i < 0 ? (step > 0 ? 0 : items.length - 1) : Math.min(items.length - 1, Math.max(0, i + step))];
    next.focus();
    next.scrollIntoView({ block: "nearest" });
  };
  switch (e.key) {
    case "g": pendingG = setTimeout(() => { pendingG = null; }, 1500); break;
    case "j": go(1); break;
    case "k": go(-1); break;
    case "/": { const f = document.querySelector("#view [data-search]"); if (f) { e.preventDefault(); f.focus(); } break; }
    case "f": document.getElementById("log-follow")?.click(); break;
    case "?": help(); break;
    default: return;
  }
});

const THEMES = ["auto", "light", "dark"];
function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  const button = $("theme");
  if (button) {
    button.textContent = "Theme: " + theme;
    button.setAttribute("aria-label", `Colour theme: ${theme} (change)`);
  }
}
function storedTheme() {
  const theme = localStorage.getItem("arkline-theme");
  return THEMES.includes(theme) ? theme : "auto";
}
// As soon as the script runs (it is deferred: before the page is shown, in
// practice), so a dark choice does not flash light.
applyTheme(storedTheme());

function setupTheme() {
  let theme = storedTheme();
  applyTheme(theme);
  $("theme").addEventListener("click", () => {
    theme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length];
    localStorage.setItem("arkline-theme", theme);
    applyTheme(theme);
  });
}

// ---- routing ----

let navigation = 0;

async function route() {
  const mine = ++navigation;
  for (const close of closers) close();
  closers = [];
  if (!me) {
    try {
      me = await api("/whoami");
    } catch (e) {
      // Signed out: the sign-in form is up. Anything else (the server gone,
      // a proxy's error page) is said rather than left as a blank page.
      if (e.message !== "signed out") view(el("p", { class: "error", role: "alert" }, `Cannot reach the server: ${e.message}`));
      return;
    }
    $("who").textContent = `${me.name} (${me.access})`;
    $("logout").hidden = me.name === "anonymous";
  }
  try {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "metrics") {
      await metricsPage(mine);
    } else if (parts[0] === "engines" && parts[2] === "executions" && parts[3]) {
      const logs = parts[4] === "logs";
      await executionPage(mine, parts[1], parts[3], logs ? parts[5] : undefined, logs ? parts[6] : undefined);
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
// A page kept in the back/forward cache would keep its streams open, each
// holding one of the browser's few connections to this server: close them
// when the page is hidden, and draw it again if it comes back.
window.addEventListener("pagehide", () => { for (const close of closers) close(); closers = []; });
window.addEventListener("pageshow", (e) => { if (e.persisted) route(); });
document.addEventListener("DOMContentLoaded", () => { setupTheme(); route(); });
