// The sweeps: the fleet's sweeps and the local scans in the store, newest first, each
// with the recurring sweep (schedule) whose run it is; then the schedules themselves.
import { get } from "./api.js";
import { fill, fmt, h, page, searchHref, sweepHref, table, when } from "./ui.js";

const STATE = { running: "good", paused: "warn", failed: "bad", cancelled: "warn", active: "good" };

function sweepsTable(sweeps) {
  if (!sweeps.length) return h("p", {}, "No sweeps and no scans in the store yet.");
  return table([
    ["sweep", (s) => h("a", { href: sweepHref(s.id) }, s.name ? `${s.name} (${s.id})` : s.id)],
    ["kind", (s) => (s.kind === "fleet" ? "fleet sweep" : "local scan")],
    ["schedule", (s) => s.schedule || "–"],
    ["state", (s) => h("span", { class: `badge ${STATE[s.state] || ""}` }, s.state || "stored")],
    ["started", (s) => (s.created_at ? when(s.created_at) : s.day || "–")],
    ["targets", (s) => fmt(s.targets), { num: true }],
    ["observations", (s) => (s.observations
      ? h("a", { href: searchHref("", { sweep: s.id }) }, fmt(s.observations)) : "0"), { num: true }],
    ["MQTT", (s) => fmt((s.hits || {}).mqtt || 0), { num: true }],
    ["AMQP", (s) => fmt((s.hits || {}).amqp || 0), { num: true }],
    ["report", (s) => (s.observations ? h("a", { href: `/?sweep=${encodeURIComponent(s.id)}` }, "overview") : "–")],
  ], sweeps, { id: "sweeps" });
}

function schedulesTable(schedules) {
  return table([
    ["schedule", (s) => s.name],
    ["cadence", (s) => s.cadence],
    ["state", (s) => h("span", { class: `badge ${STATE[s.state] || ""}` }, s.state)],
    ["next run", (s) => (s.next_due ? when(s.next_due) : "–")],
    ["last run", (s) => (s.last_sweep ? h("a", { href: sweepHref(s.last_sweep) }, s.last_sweep) : "–")],
    ["runs", (s) => fmt(s.runs), { num: true }],
    ["skipped", (s) => fmt(s.skipped), { num: true }],
    ["note", (s) => s.last_error || s.last_skip || ""],
  ], schedules, { id: "schedules" });
}

async function render(root) {
  const [sweeps, schedules] = await Promise.all([get("sweeps"), get("schedules")]);
  const parts = [sweepsTable(sweeps)];
  if (schedules.length) parts.push(h("h2", {}, "Recurring sweeps"), schedulesTable(schedules));
  fill(root, ...parts);
}

page(render);
