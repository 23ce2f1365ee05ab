// What every page shares: a DOM builder (text only, never HTML from data: product names
// and certificate subjects come from the Internet), number formats, links between pages,
// the query language's quoting, the header's session line, and error boxes.
import { ApiError, del, get } from "./api.js";

/** An element: h("a", {href}, "text", child, ...). Strings become text nodes. Attributes
 *  that are null, undefined or false are left out; on* handlers are listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace what *el* holds. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const numbers = new Intl.NumberFormat("en");
export const fmt = (n) => (n === null || n === undefined ? "–" : numbers.format(n));

/** HTML-escaped text, for the few places a library wants HTML (chart tooltips). */
export function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A value as the query language reads it: bare when it is one plain word, else quoted. */
export function quote(value) {
  const text = String(value);
  if (/^[^\s()[\]{}"*\\]+$/.test(text) && !/^(and|or|not|to)$/i.test(text)) return text;
  return `"${text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** *query* AND field:value (the query kept as it is, in parentheses when it has an OR). */
export function refine(query, field, value) {
  const term = `${field}:${quote(value)}`;
  const base = (query || "").trim();
  if (!base) return term;
  return /\bor\b/i.test(base) ? `(${base}) ${term}` : `${base} ${term}`;
}

/** The search page's URL for a query (and a view: sweep or at). */
export function searchHref(q, view = {}) {
  const params = new URLSearchParams();
  if (q) params.set("q", q);
  if (view.sweep) params.set("sweep", view.sweep);
  if (view.at) params.set("at", view.at);
  const text = params.toString();
  return `/search${text ? `?${text}` : ""}`;
}

export const hostHref = (ip) => `/host/${encodeURIComponent(ip)}`;
export const sweepHref = (id) => `/sweeps/${encodeURIComponent(id)}`;

/** The page's query parameters. */
export const params = () => new URLSearchParams(location.search);

/** Country names by alpha-2 code (vendored from i18n-iso-countries), loaded once. */
let countryNames = null;
export function countries() {
  countryNames ??= fetch("/assets/vendor/countries.json").then((r) => r.json());
  return countryNames;
}

/** MQTT levels as the protocol names them. */
export const LEVELS = { 3: "3.1", 4: "3.1.1", 5: "5.0" };

/** CONNACK codes: 3.x return codes are 0-5, 5.0 reason codes 0 and 128 up, so one table
 *  names both (the names the probe records, workers/protocols/mqtt.py). */
export const CONNACK = {
  0: "accepted", 1: "unacceptable-protocol-version", 2: "identifier-rejected",
  3: "server-unavailable", 4: "bad-username-or-password", 5: "not-authorized",
  128: "unspecified-error", 129: "malformed-packet", 130: "protocol-error",
  131: "implementation-specific-error", 132: "unsupported-protocol-version",
  133: "client-identifier-not-valid", 134: "bad-username-or-password",
  135: "not-authorized", 136: "server-unavailable", 137: "server-busy", 138: "banned",
  139: "server-shutting-down", 140: "bad-authentication-method", 141: "keep-alive-timeout",
  142: "session-taken-over", 143: "topic-filter-invalid", 144: "topic-name-invalid",
  145: "packet-identifier-in-use", 146: "packet-identifier-not-found",
  147: "receive-maximum-exceeded", 148: "topic-alias-invalid", 149: "packet-too-large",
  150: "message-rate-too-high", 151: "quota-exceeded", 152: "administrative-action",
  153: "payload-format-invalid", 154: "retain-not-supported", 155: "qos-not-supported",
  156: "use-another-server", 157: "server-moved",
  158: "shared-subscriptions-not-supported", 159: "connection-rate-exceeded",
};

/** An error box for *error* (an ApiError's message as the API wrote it). */
export function errorBox(error, what = "") {
  const text = error instanceof ApiError ? error.message : `${error && error.message || error}`;
  return h("p", { class: "error", role: "alert" }, what ? `${what}: ${text}` : text);
}

/** Time as "2026-12-03 14:05:09 UTC". */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

/** A duration in seconds as "1 h 02 min", "3 min 05 s", "12 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}

let sessionPromise = null;

/** Who this browser is (GET /api/v1/session), once per page; shown in the header. A
 *  server without tokens (serve --no-auth) answers via "none": no sign-in, no sign-out. */
export function session() {
  sessionPromise ??= get("session").then((who) => {
    showWho(who);
    return who;
  });
  return sessionPromise;
}

function showWho(who) {
  const box = document.getElementById("who");
  if (!box) return;
  if (who.via === "none") {
    fill(box, h("span", { class: "small" }, "local, no sign-in"));
    return;
  }
  const out = h("button", {
    type: "button", class: "secondary small",
    onclick: async () => {
      await del("session").catch(() => null);
      location.assign("/signin");
    },
  }, "Sign out");
  fill(box, h("span", { class: "small" }, `${who.name} (${who.role})`),
    who.via === "cookie" ? out : null);
}

/** Start a page: run *render* with the page's root and a promise of the session (asked
 *  for at the same time, not first: a page's own requests need no round trip before
 *  them; a 401 on any of them goes to sign-in); anything that fails shows as one line,
 *  never a blank page. Marks the page ready for the tests and the benchmark (data-ready
 *  on <body>). */
export async function page(render) {
  const root = document.getElementById("page");
  const who = session();
  try {
    await Promise.all([who, render(root, who)]);
  } catch (error) {
    // a 401 is on its way to the sign-in page: this page is never ready
    if (error instanceof ApiError && error.status === 401) return;
    root.append(errorBox(error));
  }
  root.removeAttribute("aria-busy");
  performance.mark("brokerscan:ready");
  document.body.dataset.ready = "1";
}

/** Set the page's heading and the window title. */
export function title(text) {
  fill(document.getElementById("title"), text);
  document.title = `${text} · brokerscan`;
}

/** A table: *columns* are [heading, cell(row) -> node|text, {num}] triples. */
export function table(columns, rows, attrs = {}) {
  return h("div", { class: "scroll" }, h("table", attrs,
    h("thead", {}, h("tr", {}, columns.map(([name, , o]) =>
      h("th", { scope: "col", class: o && o.num ? "num" : null }, name)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell, o]) =>
      h("td", { class: o && o.num ? "num" : null }, cell(row))))))));
}
