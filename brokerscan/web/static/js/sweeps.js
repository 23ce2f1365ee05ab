// The sweeps: the fleet's sweeps and the local scans in the store, newest first.
import { get } from "./api.js";
import { fill, fmt, h, page, searchHref, sweepHref, table, when } from "./ui.js";

const STATE = { running: "good", paused: "warn", failed: "bad", cancelled: "warn" };

async function render(root) {
  const sweeps = await get("sweeps");
  if (!sweeps.length) {
    fill(root, h("p", {}, "No sweeps and no scans in the store yet."));
    return;
  }
  fill(root, table([
    ["sweep", (s) => h("a", { href: sweepHref(s.id) }, s.name ? `${s.name} (${s.id})` : s.id)],
    ["kind", (s) => (s.kind === "fleet" ? "fleet sweep" : "local scan")],
    ["state", (s) => h("span", { class: `badge ${STATE[s.state] || ""}` }, s.state || "stored")],
    ["started", (s) => (s.created_at ? when(s.created_at) : s.day || "–")],
    ["targets", (s) => fmt(s.targets), { num: true }],
    ["observations", (s) => (s.observations
      ? h("a", { href: searchHref("", { sweep: s.id }) }, fmt(s.observations)) : "0"), { num: true }],
    ["MQTT", (s) => fmt((s.hits || {}).mqtt || 0), { num: true }],
    ["AMQP", (s) => fmt((s.hits || {}).amqp || 0), { num: true }],
    ["report", (s) => (s.observations ? h("a", { href: `/?sweep=${encodeURIComponent(s.id)}` }, "overview") : "–")],
  ], sweeps, { id: "sweeps" }));
}

page(render);
