// Opt-outs: the requests sent through the scanner's public page (/scanner), newest
// decisions kept, with Approve and Reject buttons for pending ones. The API answers them
// to operators only: a reader sees one line saying so.
import { ApiError, get, post } from "./api.js";
import { errorBox, fill, h, page, table, when } from "./ui.js";

const STATE = { approved: "good", pending: "warn", rejected: "bad" };

function decide(root, request, verb) {
  return h("button", {
    type: "button", class: "secondary small", id: `${verb}-${request.id}`,
    onclick: async () => {
      try {
        await post(`optouts/${encodeURIComponent(request.id)}/${verb}`);
        await render(root);
      } catch (error) {
        root.append(errorBox(error));
      }
    },
  }, verb === "approve" ? "Approve" : "Reject");
}

async function render(root) {
  let requests;
  try {
    requests = await get("optouts");
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      fill(root, h("p", {}, "Opt-out requests are for operator tokens: sign in with one to see them."));
      return;
    }
    throw error;
  }
  if (!requests.length) {
    fill(root, h("p", {}, "No opt-out requests yet (the public page: ",
      h("code", {}, "brokerscan serve --identity-page"), ", then /scanner)."));
    return;
  }
  fill(root, h("div", { class: "scroll" }, table([
    ["received", (r) => when(r.created_at)],
    ["networks", (r) => r.networks.join(", ")],
    ["contact", (r) => r.contact],
    ["reason", (r) => r.reason],
    ["state", (r) => h("span", { class: `badge ${STATE[r.state] || ""}`, id: `state-${r.id}` }, r.state)],
    ["decided", (r) => (r.decided_at ? `${when(r.decided_at)} by ${r.decided_by}` : "")],
    ["", (r) => (r.state === "approved" ? "" : h("span", {},
      decide(root, r, "approve"), " ", r.state === "pending" ? decide(root, r, "reject") : ""))],
  ], requests.slice().reverse(), { class: "compact", id: "optouts" })));
}

page(render);
