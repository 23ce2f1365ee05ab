// Changes between two sweeps: newly exposed, gone, and changed (anonymous access granted
// or withdrawn, TLS added or removed, certificate replaced, product or version changed),
// each row linking to its host; optionally only the services matching a query.
import { ApiError, get } from "./api.js";
import { errorBox, fill, fmt, h, hostHref, page, params, table } from "./ui.js";

const LIMIT = 500;

function picker(name, label, sweeps, chosen) {
  return h("div", {}, h("label", { for: name }, label), h("br"),
    h("select", { id: name, name },
      sweeps.map((s) => h("option", { value: s.id, selected: s.id === chosen },
        `${s.name || s.id} · ${s.day || ""} · ${fmt(s.observations)}`))));
}

function keys(rows, id) {
  if (!rows.length) return h("p", { class: "muted small" }, "none");
  return table([["service", (r) => h("a", { href: hostHref(r.ip) }, `${r.ip}:${r.port}`)]], rows,
    { class: "compact", id });
}

async function render(root) {
  const p = params();
  const sweeps = (await get("sweeps")).filter((s) => s.observations > 0);
  if (sweeps.length < 2) {
    fill(root, h("p", {}, "Changes need two sweeps (or scans) in the store; there ",
      sweeps.length === 1 ? "is one." : "are none."));
    return;
  }
  const b = p.get("b") || sweeps[0].id;
  const a = p.get("a") || (sweeps.find((s) => s.id !== b) || sweeps[1]).id;
  const q = p.get("q") || "";
  const result = h("div", { id: "diff" }, h("p", { class: "muted" }, "comparing…"));
  fill(root,
    h("form", { method: "get", action: "/changes", class: "card row", style: "align-items:flex-end" },
      picker("a", "From (older)", sweeps, a), picker("b", "To (newer)", sweeps, b),
      h("div", { style: "flex:1 1 16rem" }, h("label", { for: "q" }, "Only services matching"), h("br"),
        h("input", { type: "search", id: "q", name: "q", value: q, placeholder: "e.g. protocol:mqtt", style: "width:100%" })),
      h("button", { type: "submit" }, "Compare")),
    result);
  let diff;
  try {
    diff = await get("diff", { a, b, q, limit: LIMIT });
  } catch (error) {
    fill(result, errorBox(error, error instanceof ApiError && error.position !== null ? "query" : ""));
    return;
  }
  const c = diff.counts;
  const more = (n, shown) => (n > shown ? h("p", { class: "small muted" }, `the first ${fmt(shown)} of ${fmt(n)}`) : null);
  fill(result,
    h("div", { class: "stats" },
      ...[["newly exposed", "new"], ["gone", "gone"], ["changed", "changed"], ["anonymous granted", "anonymous_granted"],
        ["anonymous withdrawn", "anonymous_withdrawn"], ["TLS added", "tls_added"], ["TLS removed", "tls_removed"],
        ["certificate replaced", "certificate_replaced"], ["product changed", "product_changed"],
        ["version changed", "version_changed"]]
        .map(([label, key]) => h("div", {}, h("span", { class: "small muted" }, label),
          h("b", { id: `count-${key}` }, fmt(c[key] || 0))))),
    h("div", { class: "cards" },
      h("section", { class: "card" }, h("h2", {}, `Newly exposed (${fmt(c.new)})`), keys(diff.new, "new"), more(c.new, diff.new.length)),
      h("section", { class: "card" }, h("h2", {}, `Gone (${fmt(c.gone)})`), keys(diff.gone, "gone"), more(c.gone, diff.gone.length)),
      h("section", { class: "card" }, h("h2", {}, `Changed (${fmt(c.changed)})`),
        diff.changed.length ? table([
          ["service", (r) => h("a", { href: hostHref(r.ip) }, `${r.ip}:${r.port}`)],
          ["what changed", (r) => r.changes.map((x) => x.replaceAll("_", " ")).join(", ")],
        ], diff.changed, { class: "compact", id: "changed" }) : h("p", { class: "muted small" }, "none"),
        more(c.changed, diff.changed.length))));
}

page(render);
