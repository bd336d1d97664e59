// The Mini Connector console: a client of the relay's REST API and events stream.
//
// Everything agents and users wrote (names, log lines, errors, result values) reaches the
// page through textContent only: h() below never parses markup, and nothing here uses
// innerHTML. The Content-Security-Policy (relay/api/console.py) forbids inline scripts.

const API = "/api/v1";
const TOKEN_KEY = "mc.console.token";
const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
const CONNECTOR_STATUSES = ["pending", "online", "offline", "revoked"];
const JOB_STATUSES = ["queued", "dispatched", "running", "succeeded", "failed", "cancelled", "expired", "timed_out"];

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Element.append does not flatten arrays (it would write "[object …]" or "null" as text).
function put(parent, ...children) {
  parent.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function hashLink(path, params) {
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString() : "";
  return "#" + path + (q ? "?" + q : "");
}

function when(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleString();
}

function pct(v) {
  return v === null || v === undefined ? "–" : `${Number(v).toFixed(1)} %`;
}

function badge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

// ------------------------------------------------------------------ session and API

const session = { token: null, tenant: null, role: null, sub: null, exp: 0 };

function claims(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("not a token");
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  const text = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(text, (c) => c.charCodeAt(0))));
}

function signIn(token) {
  const c = claims(token.trim());
  if (!c.tenantId || !c.role) throw new Error("this token names no tenant or role");
  if (c.role === "service") throw new Error("a service token is the platform's: sign in with an admin or support token");
  Object.assign(session, { token: token.trim(), tenant: c.tenantId, role: c.role, sub: c.sub || "", exp: c.exp || 0 });
  sessionStorage.setItem(TOKEN_KEY, session.token);
}

// A message to show on the next page, after the navigation that clears the banner.
let notice = null;

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(session, { token: null, tenant: null, role: null, sub: null, exp: 0 });
  events.close();
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  notice = message || null;
  if (location.hash === "#/signin") route();
  else location.hash = "#/signin";
}

const isAdmin = () => session.role === "admin";

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}`, "X-Tenant-ID": session.tenant };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "NETWORK", "the relay cannot be reached");
  }
  if (res.status === 204) return null;
  let data;
  try {
    data = await res.json();
  } catch {
    throw new ApiError(res.status, `HTTP_${res.status}`, `the relay answered ${res.status}`);
  }
  if (!data.success) {
    const err = new ApiError(res.status, data.error.code, data.error.message);
    if (res.status === 401) signOut(`${err.code}: ${err.message}`);
    throw err;
  }
  return data;
}

function showBanner(text, kind = "error") {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.className = kind === "error" ? "" : "info";
  banner.hidden = false;
}

function clearBanner() {
  document.getElementById("banner").hidden = true;
}

function failed(err) {
  showBanner(err instanceof ApiError ? `${err.code}: ${err.message}` : String(err.message || err));
}

// ------------------------------------------------------------------ live events

const events = {
  ws: null,
  retry: 1000,
  listeners: new Set(),
  open() {
    if (this.ws || !session.token) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${API}/events?token=${encodeURIComponent(session.token)}`);
    this.ws = ws;
    ws.onopen = () => { this.retry = 1000; document.body.dataset.live = "yes"; };
    ws.onmessage = (m) => {
      let event;
      try { event = JSON.parse(m.data); } catch { return; }
      for (const fn of this.listeners) fn(event);
    };
    ws.onclose = () => {
      document.body.dataset.live = "no";
      if (this.ws !== ws) return;
      this.ws = null;
      if (session.token) setTimeout(() => this.open(), this.retry);
      this.retry = Math.min(this.retry * 2, 30000);
    };
  },
  close() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
  },
};

// A page registers what it needs while shown; leaving it stops timers and listeners.
let pageScope = { timers: [], listeners: [] };
function onEvent(fn) { events.listeners.add(fn); pageScope.listeners.push(fn); }
function every(ms, fn) { pageScope.timers.push(setInterval(fn, ms)); }
function leavePage() {
  for (const t of pageScope.timers) clearInterval(t);
  for (const fn of pageScope.listeners) events.listeners.delete(fn);
  pageScope = { timers: [], listeners: [] };
}

// ------------------------------------------------------------------ charts

function chart(samples, key, { width = 120, height = 28, axis = false, label = "" } = {}) {
  const svg = s("svg", { class: "spark", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                         "aria-label": label || `${key} over the last 24 hours` });
  const values = samples.map((x) => x[key]).filter((v) => typeof v === "number");
  if (axis) {
    svg.append(s("line", { class: "axis", x1: 0, y1: height - 1, x2: width, y2: height - 1 }));
    const t = s("text", { x: 2, y: 10 });
    t.textContent = "100 %";
    svg.append(t);
  }
  if (values.length < 2) return svg;
  const t0 = Date.parse(samples[0].timestamp);
  const span = Math.max(Date.parse(samples[samples.length - 1].timestamp) - t0, 1);
  const pts = samples.filter((x) => typeof x[key] === "number").map((x) => {
    const px = ((Date.parse(x.timestamp) - t0) / span) * (width - 2) + 1;
    const py = height - 2 - (Math.min(Math.max(x[key], 0), 100) / 100) * (height - 4);
    return `${px.toFixed(1)},${py.toFixed(1)}`;
  });
  svg.append(s("polyline", { class: key === "memoryUsage" ? "line2" : "line", points: pts.join(" ") }));
  return svg;
}

// ------------------------------------------------------------------ pages

function signinPage(main) {
  const area = h("textarea", { id: "token", name: "token", required: true, autocomplete: "off", spellcheck: "false" });
  const submit = (e) => {
    e.preventDefault();
    try {
      signIn(area.value);
    } catch (err) {
      showBanner(`That is not a usable token: ${err.message}`);
      return;
    }
    clearBanner();
    start();
    location.hash = "#/connectors";
  };
  put(main, 
    h("h1", {}, "Sign in"),
    h("form", { class: "signin", onsubmit: submit },
      h("p", {}, "Paste an admin or support token (",
        h("code", {}, "mini-relay token --tenant T --role support"),
        ", or your platform's). It is kept in this browser tab only."),
      h("label", { for: "token" }, "Token"), area,
      h("p", {}, h("button", { type: "submit", id: "signin" }, "Sign in"))),
  );
  area.focus();
}

async function connectorsPage(main, q) {
  const search = h("input", { type: "search", id: "q", value: q.get("q") || "", "aria-label": "Search by name or id" });
  const status = h("select", { id: "status-filter", "aria-label": "Status" },
    h("option", { value: "" }, "any status"),
    CONNECTOR_STATUSES.map((st) => h("option", { value: st, selected: q.get("status") === st }, st)));
  const apply = () => { location.hash = hashLink("/connectors", { q: search.value, status: status.value }); };
  search.addEventListener("change", apply);
  status.addEventListener("change", apply);
  const body = h("tbody");
  put(main, 
    h("h1", {}, "Connectors"),
    h("div", { class: "filters" }, h("label", {}, "Search", search), h("label", {}, "Status", status)),
    h("table", { id: "connectors" },
      h("thead", {}, h("tr", {}, ["Name", "Status", "Last heartbeat", "Version", "CPU (24 h)", "Memory (24 h)"]
        .map((t) => h("th", { scope: "col" }, t)), h("th", { scope: "col", class: "num" }, "Jobs in flight"))),
      body),
  );
  const params = new URLSearchParams({ limit: "100" });
  if (q.get("status")) params.set("status", q.get("status"));
  const { data } = await api("GET", `/connectors?${params}`);
  const needle = (q.get("q") || "").toLowerCase();
  const shown = data.filter((c) => !needle || c.name.toLowerCase().includes(needle) || c.id.includes(needle));
  if (!shown.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No connectors match.")));
  const rows = new Map();
  for (const c of shown) {
    const cpu = h("td", {}, pct(c.cpuUsage), " ");
    const mem = h("td", {}, pct(c.memoryUsage), " ");
    const row = h("tr", { "data-connector": c.id },
      h("td", {}, h("a", { href: hashLink(`/connectors/${encodeURIComponent(c.id)}`) }, c.name),
        h("div", { class: "muted mono" }, c.id)),
      h("td", { class: "status-cell" }, badge(c.status)),
      h("td", { class: "seen" }, when(c.lastSeen)),
      h("td", {}, c.version || "–"), cpu, mem,
      h("td", { class: "num" }, String(c.activeJobs ?? 0)));
    rows.set(c.id, row);
    body.append(row);
    if (c.status !== "pending" && c.status !== "revoked") {
      api("GET", `/connectors/${encodeURIComponent(c.id)}/metrics`).then(({ data: samples }) => {
        cpu.append(chart(samples, "cpuUsage", { label: `CPU of ${c.name}, last 24 hours` }));
        mem.append(chart(samples, "memoryUsage", { label: `Memory of ${c.name}, last 24 hours` }));
      }).catch(() => {});
    }
  }
  onEvent((event) => {
    if (event.type !== "connector_status_changed") return;
    const row = rows.get(event.data.connectorId);
    if (!row) return;
    row.querySelector(".status-cell").replaceChildren(badge(event.data.status));
    if (event.data.lastSeen) row.querySelector(".seen").textContent = when(event.data.lastSeen);
  });
}

async function connectorPage(main, id) {
  const { data: c } = await api("GET", `/connectors/${encodeURIComponent(id)}`);
  const statusCell = h("dd", { id: "connector-status" }, badge(c.status));
  const facts = [
    ["Status", statusCell], ["Id", h("span", { class: "mono" }, c.id)], ["Host", c.hostname || "–"],
    ["Address", c.ipAddress || "–"], ["System", c.os], ["Version", c.version || "–"],
    ["Last heartbeat", when(c.lastSeen)], ["Connected since", c.connectedSince ? new Date(c.connectedSince).toLocaleString() : "–"],
    ["CPU", pct(c.cpuUsage)], ["Memory", pct(c.memoryUsage)],
    ["Jobs in flight", `${c.activeJobs} of ${c.capacity ?? "?"}`],
    ["API key", h("span", { class: "mono" }, `${c.apiKeyPrefix}…`)],
    ["Earlier keys", c.previousKeys.length ? c.previousKeys.map((k) => h("div", { class: "mono" },
      `${k.apiKeyPrefix}… works until ${new Date(k.expiresAt).toLocaleString()}`)) : "none (no rotation in progress)"],
  ];
  const charts = h("div", { class: "charts" });
  const actions = h("div", { id: "actions" });
  put(main, 
    h("p", {}, h("a", { href: "#/connectors" }, "← Connectors")),
    h("h1", {}, c.name),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), v instanceof Node && v.tagName === "DD" ? v : h("dd", {}, v)])),
    h("p", {}, h("a", { href: hashLink(`/connectors/${encodeURIComponent(c.id)}/logs`), id: "logs-link" }, "Logs"), " · ",
      h("a", { href: hashLink("/jobs", { connectorId: c.id }) }, "Jobs")),
    h("h2", {}, "Health, last 24 hours"), charts,
    h("h2", {}, "Sources"),
    c.sources.length
      ? h("table", { id: "sources" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Type"))),
          h("tbody", {}, c.sources.map((src) => h("tr", {}, h("td", {}, src.name), h("td", {}, src.type)))))
      : h("p", { class: "muted" }, "The agent has not reported any source."),
    h("h2", {}, "Actions"), actions,
  );
  api("GET", `/connectors/${encodeURIComponent(id)}/metrics`).then(({ data: samples }) => {
    charts.append(
      h("figure", {}, chart(samples, "cpuUsage", { width: 360, height: 90, axis: true, label: "CPU, last 24 hours" }),
        h("figcaption", {}, `CPU (${samples.length} samples)`)),
      h("figure", {}, chart(samples, "memoryUsage", { width: 360, height: 90, axis: true, label: "Memory, last 24 hours" }),
        h("figcaption", {}, "Memory")));
  }).catch(failed);

  if (c.status !== "revoked") {
    const level = h("select", { id: "raise-level", "aria-label": "Log level" },
      LEVELS.map((l) => h("option", { value: l, selected: l === "DEBUG" }, l)));
    const minutes = h("input", { id: "raise-minutes", type: "number", min: "1", max: "1440", value: "30", "aria-label": "Minutes" });
    const raise = async () => {
      try {
        await api("PATCH", `/connectors/${encodeURIComponent(id)}`, { logLevel: level.value, logLevelMinutes: Number(minutes.value) });
        showBanner(`The agent ships ${level.value} lines for ${minutes.value} minutes.`, "info");
      } catch (err) { failed(err); }
    };
    actions.append(h("div", { class: "panel row" },
      h("label", {}, "Ship log lines from", level), h("label", {}, "for minutes", minutes),
      h("button", { type: "button", id: "raise", onclick: raise }, "Raise log level")));
  }
  if (isAdmin() && c.status !== "revoked") {
    const keyBox = h("div", { id: "new-key" });
    const rotate = async () => {
      try {
        const { data: k } = await api("POST", `/connectors/${encodeURIComponent(id)}/rotate-key`, {});
        const copy = h("button", { type: "button", id: "copy-key", onclick: async () => {
          try { await navigator.clipboard.writeText(k.apiKey); copy.textContent = "Copied"; } catch { copy.textContent = "Select and copy it"; }
        } }, "Copy");
        keyBox.replaceChildren(h("div", { class: "panel" },
          h("p", {}, "The new key, shown this once. The previous key works until ",
            new Date(k.previousKeyExpiresAt).toLocaleString(), "."),
          h("div", { class: "row" }, h("code", { class: "key", id: "api-key" }, k.apiKey), copy)));
      } catch (err) { failed(err); }
    };
    const revoke = async () => {
      if (!window.confirm(`Revoke ${c.name}? Its agent is disconnected at once and its queued jobs fail.`)) return;
      try {
        await api("DELETE", `/connectors/${encodeURIComponent(id)}`);
        showBanner(`${c.name} is revoked.`, "info");
        route();
      } catch (err) { failed(err); }
    };
    actions.append(h("div", { class: "panel row" },
      h("button", { type: "button", id: "rotate", onclick: rotate }, "Rotate API key"),
      h("button", { type: "button", id: "revoke", class: "danger", onclick: revoke }, "Revoke connector")), keyBox);
  }
  onEvent((event) => {
    if (event.type === "connector_status_changed" && event.data.connectorId === id) {
      statusCell.replaceChildren(badge(event.data.status));
    }
  });
}

function toIso(local) {
  return local ? new Date(local).toISOString() : "";
}
function toLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function logsPage(main, id, q) {
  const level = h("select", { id: "level", "aria-label": "Lowest level" },
    LEVELS.map((l) => h("option", { value: l, selected: (q.get("level") || "DEBUG") === l }, l)));
  const job = h("input", { id: "job", value: q.get("jobId") || "", placeholder: "job_…", "aria-label": "Job id" });
  const since = h("input", { id: "since", type: "datetime-local", value: toLocal(q.get("since")), "aria-label": "Since" });
  const until = h("input", { id: "until", type: "datetime-local", value: toLocal(q.get("until")), "aria-label": "Until" });
  const tail = h("input", { id: "tail", type: "checkbox", checked: q.get("tail") === "1" });
  const view = () => ({ level: level.value === "DEBUG" ? "" : level.value, jobId: job.value.trim(),
                        since: toIso(since.value), until: toIso(until.value), tail: tail.checked ? "1" : "" });
  const apply = (e) => { e.preventDefault(); location.hash = hashLink(`/connectors/${encodeURIComponent(id)}/logs`, view()); };
  const body = h("tbody");
  const count = h("span", { id: "count", class: "muted" });
  const lines = [];
  const download = () => {
    const blob = new Blob([lines.map((l) => JSON.stringify(l)).join("\n") + "\n"], { type: "application/x-ndjson" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `logs-${id}.ndjson` });
    document.body.append(a);
    a.click();
    a.remove();
  };
  put(main, 
    h("p", {}, h("a", { href: hashLink(`/connectors/${encodeURIComponent(id)}`) }, "← Connector")),
    h("h1", {}, "Logs"),
    h("form", { class: "filters", onsubmit: apply },
      h("label", {}, "Level", level), h("label", {}, "Job", job), h("label", {}, "Since", since),
      h("label", {}, "Until", until), h("label", { class: "row" }, h("span", {}, "Live tail"), tail),
      h("button", { type: "submit", id: "apply" }, "Apply"),
      h("button", { type: "button", id: "download", onclick: download }, "Download lines")),
    h("p", {}, count, " · ", h("a", { href: location.hash, id: "permalink" }, "Link to this view")),
    h("table", { id: "logs" }, h("thead", {}, h("tr", {}, ["Time", "Level", "Job", "Message"].map((t) => h("th", { scope: "col" }, t)))), body),
  );
  const base = new URLSearchParams({ limit: "1000" });
  for (const k of ["level", "jobId", "since", "until"]) if (q.get(k)) base.set(k, q.get(k));
  let cursor = null;
  const add = (rows) => {
    for (const l of rows) {
      lines.push(l);
      body.append(h("tr", { class: `level-${l.level}` },
        h("td", { class: "mono" }, new Date(l.timestamp).toLocaleString()), h("td", {}, l.level),
        h("td", { class: "mono" }, l.jobId ? h("a", { href: hashLink(`/jobs/${encodeURIComponent(l.jobId)}`) }, l.jobId) : ""),
        h("td", { class: "log" }, l.message)));
      cursor = l.id;
    }
    count.textContent = `${lines.length} lines`;
  };
  const fetchMore = async () => {
    const p = new URLSearchParams(base);
    if (cursor) p.set("cursor", cursor);
    const { data } = await api("GET", `/connectors/${encodeURIComponent(id)}/logs?${p}`);
    add(data.logs);
    return data.nextCursor;
  };
  let next = await fetchMore();
  for (let pages = 1; next && pages < 5; pages += 1) next = await fetchMore();
  if (q.get("tail") === "1") {
    let busy = false;
    every(3000, async () => {
      if (busy) return;
      busy = true;
      try { while (await fetchMore()); } catch (err) { failed(err); } finally { busy = false; }
    });
  }
}

async function jobsPage(main, q) {
  const status = h("select", { id: "job-status", "aria-label": "Status" }, h("option", { value: "" }, "any status"),
    JOB_STATUSES.map((st) => h("option", { value: st, selected: q.get("status") === st }, st)));
  const connector = h("input", { id: "job-connector", value: q.get("connectorId") || "", placeholder: "con_…", "aria-label": "Connector id" });
  const page = Number(q.get("page") || "1");
  const go = (p) => { location.hash = hashLink("/jobs", { status: status.value, connectorId: connector.value.trim(), page: p > 1 ? p : "" }); };
  status.addEventListener("change", () => go(1));
  connector.addEventListener("change", () => go(1));
  const body = h("tbody");
  const pager = h("div", { class: "pager" });
  put(main, 
    h("h1", {}, "Jobs"),
    h("div", { class: "filters" }, h("label", {}, "Status", status), h("label", {}, "Connector", connector)),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["Job", "Connector", "Source", "Operation", "Status", "Attempts", "Queued"]
      .map((t) => h("th", { scope: "col" }, t)), h("th", { class: "num" }, "Rows"), h("th", { class: "num" }, "ms"))), body),
    pager,
  );
  const load = async () => {
    const p = new URLSearchParams({ limit: "50", page: String(page) });
    if (q.get("status")) p.set("status", q.get("status"));
    if (q.get("connectorId")) p.set("connectorId", q.get("connectorId"));
    const { data, meta } = await api("GET", `/jobs?${p}`);
    body.replaceChildren(...(data.length ? data.map((j) => h("tr", { "data-job": j.id },
      h("td", { class: "mono" }, h("a", { href: hashLink(`/jobs/${encodeURIComponent(j.id)}`) }, j.id)),
      h("td", { class: "mono" }, h("a", { href: hashLink(`/connectors/${encodeURIComponent(j.connectorId)}`) }, j.connectorId)),
      h("td", {}, j.source), h("td", {}, j.operation), h("td", {}, badge(j.status)),
      h("td", { class: "num" }, String(j.attempts)), h("td", {}, when(j.queuedAt)),
      h("td", { class: "num" }, j.rowCount ?? "–"), h("td", { class: "num" }, j.durationMs ?? "–")))
      : [h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No jobs match."))]));
    const pages = Math.max(1, Math.ceil(meta.total / meta.limit));
    pager.replaceChildren(
      h("button", { type: "button", disabled: page <= 1, onclick: () => go(page - 1) }, "Previous"),
      h("span", {}, `page ${page} of ${pages} (${meta.total} jobs)`),
      h("button", { type: "button", disabled: page >= pages, onclick: () => go(page + 1) }, "Next"));
  };
  await load();
  let pending = null;
  onEvent((event) => {
    if (!event.type.startsWith("job_") || pending) return;
    pending = setTimeout(() => { pending = null; load().catch(failed); }, 1000);
  });
}

async function firstRows(id, limit = 20) {
  const res = await fetch(`${API}/jobs/${encodeURIComponent(id)}/results`, {
    headers: { Authorization: `Bearer ${session.token}`, "X-Tenant-ID": session.tenant },
  });
  if (!res.ok) {
    let message = `the relay answered ${res.status}`;
    try { const e = await res.json(); message = `${e.error.code}: ${e.error.message}`; } catch { /* not JSON */ }
    throw new Error(message);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const rows = [];
  while (rows.length < limit) {
    const { done, value } = await reader.read();
    if (value) text += decoder.decode(value, { stream: !done });
    let nl;
    while ((nl = text.indexOf("\n")) >= 0 && rows.length < limit) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 1);
      if (line) rows.push(JSON.parse(line));
    }
    if (done) break;
  }
  reader.cancel().catch(() => {});
  return rows;
}

async function jobPage(main, id) {
  const { data: j } = await api("GET", `/jobs/${encodeURIComponent(id)}`);
  const steps = [["queued", j.queuedAt], ["dispatched", j.dispatchedAt], ["running", j.startedAt], [j.status, j.completedAt]];
  put(main, 
    h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")),
    h("h1", {}, "Job ", h("span", { class: "mono" }, j.id)),
    h("dl", { class: "facts" },
      h("dt", {}, "Status"), h("dd", { id: "job-status-value" }, badge(j.status)),
      h("dt", {}, "Connector"), h("dd", {}, h("a", { href: hashLink(`/connectors/${encodeURIComponent(j.connectorId)}`) }, j.connectorId)),
      h("dt", {}, "Source"), h("dd", {}, j.source), h("dt", {}, "Operation"), h("dd", {}, j.operation),
      h("dt", {}, "Attempts"), h("dd", {}, String(j.attempts)), h("dt", {}, "Priority"), h("dd", {}, String(j.priority)),
      h("dt", {}, "Rows"), h("dd", { id: "job-rows" }, j.rowCount === null ? "–" : `${j.rowCount}${j.truncated ? " (cut by maxRows)" : ""}`),
      h("dt", {}, "Duration"), h("dd", {}, j.durationMs === null ? "–" : `${j.durationMs} ms`),
      j.jobKey ? [h("dt", {}, "Job key"), h("dd", { class: "mono" }, j.jobKey)] : null),
    h("h2", {}, "Timeline"),
    h("ol", { class: "timeline", id: "timeline" }, steps.filter(([, t]) => t).map(([name, t]) =>
      h("li", {}, h("strong", {}, name), " ", new Date(t).toLocaleString()))),
    j.error ? [h("h2", {}, "Error"), h("div", { class: "panel", id: "job-error" },
      h("p", {}, h("strong", {}, j.error.code), j.error.retryable ? " (retryable)" : ""), h("p", { class: "log" }, j.error.message))] : null,
  );
  const rowsBox = h("div", { id: "first-rows" });
  put(main, h("h2", {}, "First rows"), rowsBox);
  if (j.status !== "succeeded") {
    rowsBox.append(h("p", { class: "muted" }, "Rows are shown once the job has succeeded."));
  } else if (!isAdmin()) {
    rowsBox.append(h("p", { class: "muted" }, "Result rows are customer data: admin and service tokens read them."));
  } else {
    try {
      const rows = await firstRows(id);
      const cols = (j.columns || []).map((c) => c.name);
      rowsBox.append(rows.length
        ? h("table", { id: "rows" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) => h("td", {}, r[c] === null ? "NULL" : typeof r[c] === "object" ? JSON.stringify(r[c]) : String(r[c])))))))
        : h("p", { class: "muted" }, "No rows."));
    } catch (err) {
      rowsBox.append(h("p", { class: "muted" }, String(err.message)));
    }
  }
  onEvent((event) => {
    if (event.data && event.data.jobId === id && event.type === "job_completed") route();
  });
}

// ------------------------------------------------------------------ router

async function route() {
  leavePage();
  const main = document.getElementById("main");
  main.replaceChildren();
  const [path, query] = (location.hash.slice(1) || "/connectors").split("?");
  const q = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === parts[0]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!session.token || parts[0] === "signin") {
    if (session.token) { location.hash = "#/connectors"; return; }
    signinPage(main);
    if (notice) { showBanner(notice, notice === "Signed out." ? "info" : "error"); notice = null; }
    document.body.dataset.ready = String(Date.now());
    return;
  }
  try {
    if (parts[0] === "connectors" && parts.length === 1) await connectorsPage(main, q);
    else if (parts[0] === "connectors" && parts[2] === "logs") await logsPage(main, parts[1], q);
    else if (parts[0] === "connectors") await connectorPage(main, parts[1]);
    else if (parts[0] === "jobs" && parts.length === 1) await jobsPage(main, q);
    else if (parts[0] === "jobs") await jobPage(main, parts[1]);
    else put(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/connectors" }, "Connectors")));
  } catch (err) {
    failed(err);
  }
  document.body.dataset.ready = String(Date.now());
}

function start() {
  document.getElementById("who").textContent = `${session.sub} · ${session.role} · tenant ${session.tenant}`;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  events.open();
}

function boot() {
  document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
  // The platform opens the console signed in with /console#token=<JWT>[&to=/jobs/job_…]:
  // the fragment never reaches a server or a log; it is read here and removed at once.
  const fragment = new URLSearchParams(location.hash.startsWith("#token=") ? location.hash.slice(1) : "");
  const stored = fragment.get("token") || sessionStorage.getItem(TOKEN_KEY);
  if (stored) {
    try {
      signIn(stored);
      start();
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      showBanner(`That is not a usable token: ${err.message}`);
    }
  }
  if (fragment.get("token")) {
    const to = fragment.get("to") || "/connectors";
    history.replaceState(null, "", `${location.pathname}#${to.startsWith("/") ? to : "/connectors"}`);
  }
  window.addEventListener("hashchange", () => { clearBanner(); route(); });
  route();
}

boot();
