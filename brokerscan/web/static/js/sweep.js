// One sweep: its progress while it runs (bar, probes/s, ETA, hits by protocol, shards by
// state, workers alive), read again every second without a reload; pause, resume and
// cancel for an operator; for a local scan, what the store holds of it.
import { ApiError, post, get } from "./api.js";
import {
  duration, errorBox, fill, fmt, h, page, searchHref, table, title, when,
} from "./ui.js";

const LIVE = new Set(["running", "paused"]);
const EVERY_MS = 1000;
const SHARD_STATES = ["done", "running", "queued", "pending", "paused", "failed", "cancelled"];

function stat(label, value, id) {
  return h("div", {}, h("span", { class: "small muted" }, label), h("b", { id }, value));
}

function counts(object, id) {
  const rows = Object.entries(object || {}).sort((a, b) => b[1] - a[1]);
  if (!rows.length) return h("p", { class: "muted small", id }, "none yet");
  return table([["", (r) => r[0]], ["", (r) => fmt(r[1]), { num: true }]], rows,
    { class: "compact", id });
}

function view(s, who, act, message) {
  const operator = who.role === "operator";
  const progress = s.progress ?? (s.state === "stored" ? 1 : 0);
  const shards = SHARD_STATES.filter((k) => (s.shards || {})[k])
    .map((k) => [k, s.shards[k]]).concat(Object.entries(s.shards || {}).filter(([k]) => !SHARD_STATES.includes(k)));
  const mine = (s.workers || []).filter((w) => w.sweep === s.id);
  const buttons = [];
  if (operator && s.kind === "fleet") {
    if (s.state === "running") buttons.push(h("button", { type: "button", id: "pause", onclick: () => act("pause") }, "Pause"));
    if (s.state === "paused") buttons.push(h("button", { type: "button", id: "resume", onclick: () => act("resume") }, "Resume"));
    if (LIVE.has(s.state)) {
      buttons.push(h("button", {
        type: "button", id: "cancel", class: "danger",
        // cancelling cannot be undone: ask first
        onclick: () => window.confirm(`Cancel sweep ${s.name || s.id}? It cannot be resumed.`) && act("cancel"),
      }, "Cancel"));
    }
  }
  return [
    h("div", { class: "row" },
      h("span", { class: "badge", id: "state", "aria-live": "polite" }, s.state || "stored"),
      h("span", { class: "muted small" }, s.kind === "fleet" ? `fleet sweep, created ${when(s.created_at)}` : "local scan"),
      buttons.length ? h("span", { class: "row", id: "controls" }, buttons) : null),
    message ? h("div", { style: "margin-top:0.5rem" }, message) : null,
    s.kind === "fleet" ? [
      h("div", { style: "margin-top:0.75rem" },
        h("label", { for: "progress" }, `Progress ${(progress * 100).toFixed(1)}%`),
        h("progress", { id: "progress", max: "1", value: String(progress) })),
      h("div", { class: "stats" },
        stat("probes", `${fmt(s.probes)} of ${fmt(s.targets)}`, "probes"),
        stat("probes/s", fmt(Math.round(s.probes_per_second || 0)), "rate"),
        stat("time left", s.state === "running" ? duration(s.eta_seconds) : "–", "eta"),
        stat("open ports", fmt(s.open), "open"),
        stat("workers on it", fmt(mine.length), "workers-alive"),
        stat("scheduler", s.scheduler_alive ? "alive" : "not running", "scheduler")),
    ] : null,
    h("div", { class: "cards" },
      h("section", { class: "card" }, h("h2", {}, "Hits by protocol"), counts(s.hits, "hits")),
      s.kind === "fleet" ? h("section", { class: "card" }, h("h2", {}, "Shards"),
        counts(Object.fromEntries(shards), "shards")) : null,
      s.kind === "fleet" ? h("section", { class: "card" }, h("h2", {}, "Probe outcomes"), counts(s.statuses, "statuses")) : null,
      s.kind === "fleet" ? h("section", { class: "card" }, h("h2", {}, "Workers alive"),
        (s.workers || []).length ? table([
          ["worker", (w) => w.id], ["sweep", (w) => (w.sweep === s.id ? "this one" : w.sweep || "idle")],
          ["shard", (w) => (w.shard ?? "–")], ["probes", (w) => fmt(w.probes), { num: true }],
        ], s.workers, { class: "compact", id: "workers" }) : h("p", { class: "muted small" }, "none")) : null),
    h("p", {}, `${fmt(s.observations)} observations in the store. `,
      s.observations ? [h("a", { href: searchHref("", { sweep: s.id }) }, "Search them"), " · ",
        h("a", { href: `/?sweep=${encodeURIComponent(s.id)}` }, "its overview")] : null),
  ];
}

async function render(root, session) {
  const id = decodeURIComponent(location.pathname.split("/").pop() || "");
  const who = await session;
  let message = null;
  let timer = null;
  let sweep = await get(`sweeps/${encodeURIComponent(id)}`);
  title(sweep.name ? `Sweep ${sweep.name}` : `Sweep ${id}`);

  async function act(verb) {
    root.querySelectorAll("#controls button").forEach((b) => { b.disabled = true; });
    try {
      const done = await post(`sweeps/${encodeURIComponent(id)}/${verb}`);
      sweep = { ...sweep, state: done.state };
      message = done.workers_notified ? null
        : h("p", { class: "notice small" }, "Redis did not answer: workers follow when the scheduler next runs.");
    } catch (error) {
      message = errorBox(error, verb);
    }
    draw();
    schedule(0);
  }

  function draw() {
    fill(root, view(sweep, who, act, message));
  }

  function schedule(delay = EVERY_MS) {
    clearTimeout(timer);
    if (sweep.kind !== "fleet" || !LIVE.has(sweep.state)) return;
    timer = setTimeout(async () => {
      try {
        sweep = await get(`sweeps/${encodeURIComponent(id)}`);
        if (message && message.classList && message.classList.contains("stale")) message = null;
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) return;
        message = errorBox(error, "updating");
        message.classList.add("stale");
      }
      draw();
      document.body.dataset.updated = String(Date.now());
      schedule();
    }, delay);
  }

  draw();
  schedule();
}

page(render);
