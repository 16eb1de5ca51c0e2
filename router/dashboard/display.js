// Pure display rules of the dashboard: what a number, an error or a total reads as.
// No DOM here, so tests can call each function alone.
"use strict";

const PREFIX_CHARS = 80;
// Control characters other than tab and newline, and the replacement character the router's
// UTF-8 decode leaves for each byte of a binary body.
const UNPRINTABLE = /[\ufffd\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;

function bytes(n) {
  if (typeof n !== "number") return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function shortOp(op) {
  return { release_memory_occupation: "sleep", resume_memory_occupation: "wake",
           flush_cache: "flush" }[op] || op;
}

// Error text as a person can read it: unchanged if printable, else its printable prefix (at
// most PREFIX_CHARS) and `<N bytes, not text>` for the rest. pdfleet/printable.py is the same
// rule for the CLI.
function printable(text) {
  const s = String(text);
  const at = s.search(UNPRINTABLE);
  if (at < 0) return s;
  const prefix = s.slice(0, Math.min(at, PREFIX_CHARS));
  const rest = s.slice(prefix.length);
  // Each replacement character stood for one byte, though UTF-8 spends three on it.
  const replaced = (rest.match(/\ufffd/g) || []).length;
  return `${prefix}<${new TextEncoder().encode(rest).length - 2 * replaced} bytes, not text>`;
}

// The memory a node's total belongs to. Nodes name it (`pool`: a GPU, a host's RAM); for one
// that does not, a process-RSS reading's total is its host's RAM, anything else its own.
function memoryPool(node) {
  const m = node.memory;
  if (m.pool) return m.pool;
  if (m.measured_as === "process RSS") return `RAM of ${new URL(node.server).hostname}`;
  return node.server;
}

// The fleet's memory: used is per process and sums; the total counts each pool once.
function memoryTotals(nodes) {
  let used = 0;
  const totals = new Map();
  for (const node of nodes) {
    if (!node.memory || typeof node.memory !== "object") continue;
    used += node.memory.used_bytes || 0;
    if (node.memory.total_bytes) totals.set(memoryPool(node), node.memory.total_bytes);
  }
  let total = 0;
  for (const value of totals.values()) total += value;
  return { used, total };
}

// One time scale for every operation shown, so bar widths compare across operations: the
// longest of them, in ms.
function timelineScale(operations) {
  let scale = 1;
  for (const op of operations) {
    scale = Math.max(scale, op.elapsed_ms, ...op.nodes.map((n) => n.ended_ms));
  }
  return scale;
}

// A weight version as a card or the summary shows it: the router says "unknown" for a node
// not polled yet and null for a node (or fleet) that names no version.
function versionLabel(version) {
  if (version === null || version === undefined) return "no version";
  if (version === "unknown") return "version unknown";
  return printable(version);
}

function duration(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(ms >= 10000 ? 0 : 1)} s` : `${ms.toFixed(0)} ms`;
}
