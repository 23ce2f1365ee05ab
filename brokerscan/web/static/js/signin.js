// Sign in: the token is posted once to /api/v1/session, which keeps it in an http-only
// cookie; it never goes into a URL, and this page forgets it at once.
import { ApiError, get, post } from "./api.js";
import { errorBox, fill, h, params } from "./ui.js";

/**
 * Only a path of this site is a place to go back to. The value is read as the browser
 * reads a link (so "/\\host", "/\t/host" and the like resolve to another host and are
 * refused) and only its path, query and fragment are kept.
 */
function next() {
  let url;
  try {
    url = new URL(params().get("next") || "/", location.origin);
  } catch {
    return "/";
  }
  const path = url.pathname + url.search + url.hash;
  return url.origin === location.origin && path.startsWith("/") && !path.startsWith("//") ? path : "/";
}

async function render(root) {
  const who = await get("session").catch(() => null);
  if (who && who.via === "none") {
    fill(root, h("p", {}, "This server runs without tokens (--no-auth): there is nothing to sign in to. ",
      h("a", { href: next() }, "Go on")));
    return;
  }
  const input = h("input", { type: "password", id: "token", name: "token", required: true,
    autocomplete: "current-password", spellcheck: "false", "aria-describedby": "token-help" });
  const status = h("div", { "aria-live": "assertive" });
  const form = h("form", { class: "card signin", method: "post", action: "/signin" },
    who ? h("p", { class: "notice small" }, `Signed in as ${who.name} (${who.role}). Another token replaces it.`) : null,
    h("label", { for: "token" }, "Token"),
    input,
    h("p", { id: "token-help", class: "small muted" },
      "A token from ", h("code", {}, "brokerscan token create --name NAME --role reader|operator"),
      ". It is kept in an http-only cookie for this site."),
    h("button", { type: "submit" }, "Sign in"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    input.value = "";
    try {
      await post("session", { token });
      location.assign(next());
    } catch (error) {
      fill(status, errorBox(error instanceof ApiError && error.status === 401 ? "That token is not valid (or was revoked)." : error));
      input.focus();
    }
  });
  fill(root, form);
  input.focus();
}

const root = document.getElementById("page");
render(root).catch((error) => root.append(errorBox(error))).finally(() => {
  root.removeAttribute("aria-busy");
  document.body.dataset.ready = "1";
});
