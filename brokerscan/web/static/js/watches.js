// Watches: each watch (query, networks, AS numbers, channels) with its delivery log
// (status, tries, next try, last error) and a button that sends a test event now. The
// API answers watches to operators only: a reader sees one line saying so.
import { ApiError, get, post } from "./api.js";
import { errorBox, fill, h, hostHref, page, table, when } from "./ui.js";

const STATUS = { delivered: "good", pending: "warn", failed: "bad", refused: "bad" };

function log(deliveries, id) {
  if (!deliveries.length) return h("p", { class: "muted small", id }, "nothing delivered yet");
  return h("div", { class: "scroll" }, table([
    ["when", (d) => when(d.created_at)],
    ["event", (d) => h("span", {}, d.event.kind.replaceAll("_", " "), " ",
      d.event.kind === "test" ? `${d.event.ip}:${d.event.port}`
        : h("a", { href: hostHref(d.event.ip) }, `${d.event.ip}:${d.event.port}`))],
    ["sweep", (d) => d.event.sweep],
    ["channel", (d) => d.channel],
    ["status", (d) => h("span", { class: `badge ${STATUS[d.status] || ""}` }, d.status)],
    ["tries", (d) => String(d.attempts), { num: true }],
    ["next try", (d) => (d.status === "pending" && d.next_try_at ? when(d.next_try_at) : "–")],
    ["last error", (d) => d.last_error || ""],
    ["delivery id", (d) => h("code", { class: "small" }, d.id)],
  ], deliveries, { class: "compact", id }));
}

async function card(watch) {
  const box = h("section", { class: "card", id: `watch-${watch.name}` });
  const show = async (message) => {
    const deliveries = await get(`watches/${encodeURIComponent(watch.name)}/deliveries`, { limit: 50 });
    fill(box,
      h("h2", {}, watch.name),
      h("p", {}, h("code", {}, watch.query || "everything"),
        watch.networks.length ? ` in ${watch.networks.join(", ")}` : "",
        watch.asns.length ? ` in AS ${watch.asns.join(", ")}` : ""),
      h("p", { class: "small muted" },
        [watch.webhook_url && `webhook ${watch.webhook_url}`, watch.email && `email ${watch.email}`]
          .filter(Boolean).join(" · ")),
      h("button", {
        type: "button", class: "secondary small", id: `test-${watch.name}`,
        onclick: async () => {
          try {
            const sent = await post(`watches/${encodeURIComponent(watch.name)}/test`);
            await show(`test: ${sent.map((d) => `${d.channel} ${d.status}`).join(", ")}`);
          } catch (error) {
            box.append(errorBox(error));
          }
        },
      }, "Send a test event"),
      message ? h("p", { class: "small", id: `message-${watch.name}` }, message) : null,
      log(deliveries, `log-${watch.name}`));
  };
  await show("");
  return box;
}

async function render(root) {
  let watches;
  try {
    watches = await get("watches");
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      fill(root, h("p", {}, "Watches are for operator tokens: sign in with one to see them."));
      return;
    }
    throw error;
  }
  if (!watches.length) {
    fill(root, h("p", {}, "No watches yet: ", h("code", {},
      "brokerscan watch add NAME --networks CIDR --query 'protocol:mqtt anonymous:true' --webhook URL --secret S"),
      " (or POST /api/v1/watches)."));
    return;
  }
  fill(root, h("div", { id: "watches" }, ...(await Promise.all(watches.map(card)))));
}

page(render);
