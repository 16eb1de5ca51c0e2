// The pdfleet dashboard: polls the router about every second and draws what it says.
// Plain DOM, no framework; every text from the router goes in through textContent.
// display.js, loaded first, holds the pure rules: bytes, shortOp, printable, the totals.
"use strict";

const REFRESH_MS = Number(document.body.dataset.refreshMs) || 1000;
const FETCH_TIMEOUT_MS = 3000;
const TIMELINE_OPERATIONS = 8;
const TAGS = ["weights", "kv_cache", "cuda_graph", "weights_drafter"];
const $ = (id) => document.getElementById(id);
let pending = null; // the control request waiting for an admin token

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

async function fetchJSON(url, options = {}) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  try {
    const resp = await fetch(url, { cache: "no-store", ...options, signal: abort.signal });
    let body = null;
    try { body = await resp.json(); } catch (_) { body = null; }
    return { status: resp.status, body };
  } finally {
    clearTimeout(timer);
  }
}

function renderSummary(status) {
  const s = status.summary;
  $("sum-up").textContent = s.up;
  $("sum-down").textContent = s.down;
  $("sum-asleep").textContent = s.sleeping;
  $("sum-routable").textContent = `${s.routable}/${s.total}`;
  $("sum-stale").textContent = s.stale;
  $("sum-version").textContent = versionLabel(status.weight_version);
  $("sum-version").title = `version_policy: ${status.version_policy}`;
  const { used, total } = memoryTotals(status.nodes);
  $("sum-memory").textContent = total ? `${bytes(used)} / ${bytes(total)}` : "unknown";
}

function tagChips(node) {
  const chips = el("div", "tags");
  const regions = node.memory && node.memory.regions ? node.memory.regions : {};
  for (const tag of TAGS) {
    let state = "unknown";
    if (Array.isArray(node.released_tags)) {
      state = node.released_tags.includes(tag) ? "released" : "resident";
    }
    if (state === "resident" && regions[tag] === undefined && node.memory !== "unknown") {
      state = "none";
    }
    const chip = el("span", `tag tag-${state}`, tag);
    chip.dataset.tag = tag;
    chip.dataset.state = state;
    chip.title = `${tag}: ${state}`;
    chips.append(chip);
  }
  return chips;
}

function memoryBar(node) {
  const box = el("div", "memory");
  const m = node.memory;
  if (!m || typeof m !== "object" || !m.total_bytes) {
    box.append(el("span", "muted", "memory unknown"));
    return box;
  }
  const bar = el("div", "bar");
  const fill = el("div", "fill");
  fill.style.width = `${Math.min(100, (100 * m.used_bytes) / m.total_bytes).toFixed(1)}%`;
  bar.append(fill);
  box.append(bar, el("span", "memory-text",
    `${bytes(m.used_bytes)} / ${bytes(m.total_bytes)}` + (m.measured_as ? ` · ${m.measured_as}` : "")));
  return box;
}

function nodeCard(node, now) {
  const reach = node.reachable === true ? "up" : node.reachable === false ? "down" : "unknown";
  const asleep = node.sleeping === true && reach !== "down";
  const card = el("article",
    `card card-${reach}${asleep ? " asleep" : ""}${node.stale ? " stale" : ""}`);
  card.dataset.server = node.server;
  card.dataset.reachable = reach;
  card.dataset.sleeping = String(node.sleeping);
  card.dataset.stale = String(node.stale);
  card.dataset.source = node.source;
  const head = el("div", "card-head");
  head.append(el("span", `role role-${node.role}`, node.role));
  if (node.engine) head.append(el("span", "engine", node.engine));
  const version = el("span", "version", versionLabel(node.weight_version));
  version.title = node.stale ? "not at the fleet's weight version: not served" : "weight version";
  head.append(version);
  if (node.stale) head.append(el("span", "stale-mark", "stale"));
  head.append(el("span", `reach reach-${reach}`, reach === "up" ? (asleep ? "asleep" : "up") : reach));
  // A discovered node: the pod it runs in, and its phase while it is not simply serving.
  if (node.phase && node.phase !== "serving") head.append(el("span", "engine", node.phase));
  card.append(head, el("div", "url", node.server));
  if (node.pod) card.append(el("div", "url", `${node.source} pod ${node.pod}`));
  card.append(tagChips(node), memoryBar(node));
  const facts = el("dl", "facts");
  const inflight = node.inflight === "unknown" ? "?" : node.inflight;
  const age = typeof node.checked_at === "number" ? `${Math.max(0, now - node.checked_at).toFixed(1)} s ago` : "never";
  for (const [k, v] of [["in flight", `${inflight} (router ${node.outstanding})`],
                        ["last op", node.last_op ? shortOp(node.last_op) : "–"],
                        ["data", age]]) {
    facts.append(el("dt", null, k), el("dd", null, v));
  }
  card.append(facts);
  if (node.last_error) card.append(el("div", "error", printable(node.last_error)));
  return card;
}

function renderNodes(status) {
  const box = $("nodes");
  const cards = status.nodes.map((n) => nodeCard(n, status.generated_at));
  if (!cards.length) cards.push(el("p", "muted", "no nodes registered"));
  box.replaceChildren(...cards);
}

function renderTimeline(operations) {
  const box = $("timeline");
  if (!operations.length) {
    box.replaceChildren(el("p", "muted", "none yet"));
    return;
  }
  const shown = operations.slice(0, TIMELINE_OPERATIONS);
  const scale = timelineScale(shown);
  const legend = el("div", "timeline-scale", `one scale for all: a full track is ${duration(scale)}`);
  legend.dataset.scaleMs = String(scale);
  const rows = [legend];
  for (const op of shown) {
    const block = el("div", `op op-${op.outcome}`);
    block.dataset.requestId = op.request_id;
    const when = new Date(op.started_at * 1000).toLocaleTimeString();
    const tags = op.tags ? op.tags.join(",") : op.operation === "flush_cache" ? "" : "all tags";
    block.append(el("div", "op-head",
      `${when} · ${shortOp(op.operation)} ${tags} · ${op.outcome} · ` +
      `${op.total - op.failed}/${op.total} ok · ${op.elapsed_ms.toFixed(0)} ms`));
    for (const n of op.nodes) {
      const line = el("div", "lane");
      line.append(el("span", "lane-label", n.server.replace(/^https?:\/\//, "")));
      const track = el("div", "track");
      const bar = el("div", `span span-${n.outcome}`);
      bar.style.left = `${(100 * n.started_ms) / scale}%`;
      bar.style.width = `${Math.max(0.5, (100 * (n.ended_ms - n.started_ms)) / scale)}%`;
      bar.title = `${n.server}: ${n.outcome}, ${(n.ended_ms - n.started_ms).toFixed(1)} ms` +
        (n.error ? ` — ${n.kind || ""} ${printable(n.error)}` : "");
      track.append(bar);
      line.append(track, el("span", "lane-ms", `${(n.ended_ms - n.started_ms).toFixed(0)} ms`));
      block.append(line);
    }
    rows.push(block);
  }
  box.replaceChildren(...rows);
}

async function refresh() {
  try {
    const [status, ops] = await Promise.all([
      fetchJSON("/cluster/status"), fetchJSON("/cluster/operations")]);
    if (status.status !== 200 || !status.body) throw new Error(`status ${status.status}`);
    renderSummary(status.body);
    renderNodes(status.body);
    if (ops.status === 200 && ops.body) renderTimeline(ops.body.operations);
    const conn = $("connection");
    conn.textContent = `live · ${new Date().toLocaleTimeString()}`;
    conn.className = "connection ok";
  } catch (err) {
    const conn = $("connection");
    conn.textContent = "router unreachable · retrying";
    conn.className = "connection bad";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

function showReport(op, reply) {
  const box = $("report");
  box.hidden = false;
  const body = reply.body || {};
  const detail = body.detail && typeof body.detail === "object" ? body.detail : null;
  const lines = [];
  let title;
  if (reply.status === 200) {
    title = `${shortOp(op)}: all ${body.total} nodes ok in ${body.elapsed_ms} ms`;
    for (const n of body.nodes) lines.push([n.server, "ok", `HTTP ${n.status}`, n.elapsed_ms]);
  } else if (detail) {
    title = detail.message;
    for (const n of detail.nodes || []) lines.push([n.server, "ok", `HTTP ${n.status}`, n.elapsed_ms]);
    for (const n of detail.failures || []) {
      lines.push([n.server, "failed", printable(n.error || `HTTP ${n.status}: ${n.detail || ""}`),
                  n.elapsed_ms]);
    }
  } else {
    title = `${shortOp(op)}: HTTP ${reply.status} ${typeof body.detail === "string" ? printable(body.detail) : ""}`;
  }
  const table = el("table");
  for (const [server, outcome, what, ms] of lines) {
    const row = el("tr", `row-${outcome}`);
    row.append(el("td", null, server), el("td", null, outcome), el("td", null, what),
               el("td", null, typeof ms === "number" ? `${ms.toFixed(0)} ms` : ""));
    table.append(row);
  }
  box.className = `report ${reply.status === 200 ? "report-ok" : "report-failed"}`;
  box.replaceChildren(el("div", "report-title", title), table);
}

async function control(op) {
  const tags = [...document.querySelectorAll("#tags input:checked")].map((i) => i.value);
  const body = op === "flush_cache" ? {} : { tags: tags.length === TAGS.length ? null : tags };
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem("pdfleet-admin-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  $("report").hidden = false;
  $("report").replaceChildren(el("div", "report-title", `${shortOp(op)}: running…`));
  let reply;
  try {
    reply = await fetchJSON(`/${op}`, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (err) {
    $("report").replaceChildren(el("div", "report-title", `${shortOp(op)}: no answer (${err})`));
    return;
  }
  if (reply.status === 401) {
    pending = op;
    $("token-form").hidden = false;
    $("token").focus();
    $("report").replaceChildren(el("div", "report-title", "admin token required"));
    return;
  }
  showReport(op, reply);
}

for (const button of document.querySelectorAll("button[data-op]")) {
  button.addEventListener("click", () => control(button.dataset.op));
}
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("pdfleet-admin-token", $("token").value);
  $("token-form").hidden = true;
  if (pending) { const op = pending; pending = null; control(op); }
});
refresh();
