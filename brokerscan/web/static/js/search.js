// Search: the query box (a GET form, so the URL holds the query and a search can be
// shared), the syntax and the field list at hand, facets beside the results (a click adds
// a filter), the results a page at a time by cursor, and the whole result set as CSV or
// JSON lines. A query the API cannot read shows its message with the place marked.
import { ApiError, apiUrl, get } from "./api.js";
import {
  CONNACK, LEVELS, countries, errorBox, fill, fmt, h, hostHref, page, params, refine,
  searchHref, table, title, when,
} from "./ui.js";

/** Results per page (``limit=`` in the URL changes it, up to the API's 1,000). */
const PAGE = 50;
/** The facets beside the results: field, how many values. The first group is counted
 *  from the rollups when the query allows (fast on any store) and brings the total; the
 *  second reads the rows, so it is asked for apart and fills in when it comes. */
const FACETS = [
  ["protocol", 5], ["port", 10], ["country", 10], ["asn", 10], ["anonymous", 2], ["status", 6],
];
const MORE_FACETS = [
  ["org", 10], ["product", 10], ["version", 10], ["mqtt.level", 3], ["mqtt.return_code", 8],
  ["tls.version", 5], ["cert.trusted", 2], ["cert.self_signed", 2],
];

const SYNTAX = [
  ["field:value", "the field equals the value (text: any case)"],
  ['field:"a b"', "a value with spaces or special characters"],
  ["field:value*", "a prefix"],
  ["field:*", "the field has a value"],
  ["field:[a TO b]", "a range; { } leave the ends out; * is open"],
  ["ip:1.2.0.0/16", "a CIDR block"],
  ["a b, a AND b", "both"],
  ["a OR b", "either"],
  ["NOT a", "not (an unknown value does not match)"],
  ["word", "found in the product, organisation or certificate names"],
];

/** The query with the character at *position* marked (0-based; past the end: a caret). */
function marked(query, position) {
  if (position === null || position === undefined) return h("pre", {}, query);
  const at = Math.max(0, Math.min(position, query.length));
  const mark = at < query.length ? query[at] : " ";
  return h("pre", { "aria-label": `the query, position ${at + 1} marked` },
    query.slice(0, at), h("mark", {}, mark), query.slice(at + 1));
}

function queryError(query, error) {
  const where = error.column ? ` (column ${error.column})` : "";
  return h("div", { class: "error query-error", role: "alert", id: "query-error" },
    h("div", {}, `${error.message}${where}`), marked(query, error.position));
}

function help(fields, input) {
  const insert = (name) => {
    const at = input.selectionStart ?? input.value.length;
    const before = input.value.slice(0, at);
    const gap = before && !/\s$/.test(before) ? " " : "";
    input.value = `${before}${gap}${name}:${input.value.slice(at)}`;
    input.focus();
    const caret = before.length + gap.length + name.length + 1;
    input.setSelectionRange(caret, caret);
  };
  return h("details", { class: "card", id: "help" },
    h("summary", {}, "Syntax and fields"),
    h("div", { class: "cards", style: "margin-top:0.5rem" },
      h("div", {}, h("h3", {}, "Syntax"),
        table([["form", (r) => h("code", {}, r[0])], ["meaning", (r) => r[1]]], SYNTAX,
          { class: "compact" })),
      h("div", { class: "fields" }, h("h3", {}, "Fields (click to insert)"),
        table([
          ["field", (f) => h("button", { type: "button", onclick: () => insert(f.name),
            title: f.aliases.length ? `also: ${f.aliases.join(", ")}` : null }, f.name)],
          ["kind", (f) => f.kind],
          ["meaning", (f) => [f.help, f.choices.length ? h("div", { class: "muted small" }, f.choices.join(", ")) : null]],
        ], fields, { class: "compact", id: "fields" }))));
}

function facetLabel(field, facet, names) {
  const value = facet.value;
  if (field === "country") return names[value] ? `${names[value]} (${value})` : String(value);
  if (field === "mqtt.level") return `MQTT ${LEVELS[value] || value}`;
  if (field === "mqtt.return_code") return `${value} ${CONNACK[value] || ""}`.trim();
  if (field === "asn") return facet.label ? `AS${value} ${facet.label}` : `AS${value}`;
  return String(value);
}

function facetList(count, query, view, names, facets) {
  return facets.filter(([field]) => (count.facets[field] || []).length).map(([field]) =>
    h("section", { "aria-label": `facet ${field}` }, h("h3", {}, field),
      h("ul", {}, count.facets[field].map((f) => h("li", {},
        h("a", { href: searchHref(refine(query, field, f.value), view),
          dataset: { facet: field, value: String(f.value) } },
        h("span", { class: "v" }, facetLabel(field, f, names)),
        h("span", { class: "c" }, fmt(f.count))))))));
}

function detail(hit) {
  const parts = [];
  if (hit.product || hit.version) parts.push([hit.product, hit.version].filter(Boolean).join(" "));
  if (hit.protocol === "mqtt") {
    if (hit.anonymous === true) parts.push(h("span", { class: "badge bad" }, "anonymous"));
    else if (hit.anonymous === false) parts.push(h("span", { class: "badge good" }, "auth required"));
    if (hit.mqtt_levels) parts.push(`MQTT ${hit.mqtt_levels.split(" ").map((l) => LEVELS[l] || l).join(", ")}`);
  }
  if (hit.amqp_family) parts.push(`AMQP ${hit.amqp_family}`);
  if (hit.tls_version) parts.push(hit.tls_version);
  if (hit.cert_self_signed) parts.push(h("span", { class: "badge warn" }, "self-signed"));
  if (hit.cert_expired) parts.push(h("span", { class: "badge warn" }, "expired"));
  return h("span", { class: "row", style: "gap:0.3rem 0.5rem" }, parts.map((p) => h("span", {}, p)));
}

function results(hits) {
  return table([
    ["address", (r) => h("a", { href: hostHref(r.ip) }, r.ip)],
    ["port", (r) => `${r.port}/${r.transport}`, { num: true }],
    ["protocol", (r) => r.protocol || "–"],
    ["status", (r) => r.status],
    ["what", detail],
    ["country", (r) => r.country || "–"],
    ["network", (r) => (r.asn ? `AS${r.asn}${r.org ? ` ${r.org}` : ""}` : "–")],
    ["last seen", (r) => h("time", { datetime: r.last_seen, title: when(r.last_seen), class: "nowrap" },
      when(r.last_seen).slice(0, 16))],
  ], hits, { id: "results" });
}

async function render(root) {
  const p = params();
  const query = p.get("q") || "";
  const view = { sweep: p.get("sweep") || "", at: p.get("at") || "" };
  const cursor = p.get("cursor") || "";
  const pageNo = Math.max(1, Number.parseInt(p.get("page") || "1", 10) || 1);
  const size = Math.min(1000, Math.max(1, Number.parseInt(p.get("limit") || "", 10) || PAGE));
  const scope = { sweep: view.sweep, at: view.at };
  if (query) title(`Search: ${query.length > 60 ? `${query.slice(0, 57)}…` : query}`);

  const input = h("input", { type: "search", name: "q", id: "q", value: query,
    "aria-label": "query", placeholder: "protocol:mqtt anonymous:true country:DE",
    autocomplete: "off", spellcheck: "false" });
  const status = h("div", { id: "explain", "aria-live": "polite" });
  const form = h("form", { method: "get", action: "/search", role: "search" },
    h("div", { class: "searchbar" }, input,
      view.sweep ? h("input", { type: "hidden", name: "sweep", value: view.sweep }) : null,
      view.at ? h("input", { type: "hidden", name: "at", value: view.at }) : null,
      size !== PAGE ? h("input", { type: "hidden", name: "limit", value: String(size) }) : null,
      h("button", { type: "submit" }, "Search")));
  const fieldsBox = h("div");
  const main = h("div", { id: "main-results" }, h("p", { class: "muted" }, "searching…"));
  const side = h("aside", { class: "card facets", "aria-label": "facets" }, h("h2", {}, "Refine"));
  fill(root, form, status, fieldsBox,
    view.sweep || view.at ? h("p", { class: "notice small" },
      view.sweep ? `Reading what sweep ${view.sweep} observed. ` : `Reading the current view as of the end of ${view.at}. `,
      h("a", { href: searchHref(query) }, "Search the current view instead")) : null,
    h("div", { class: "layout", style: "margin-top:0.75rem" }, side, main));

  get("fields").then((fields) => fieldsBox.append(help(fields, input)))
    .catch((e) => fieldsBox.append(errorBox(e, "field list")));
  checkAsYouType(input, status);

  // The page of results shows as soon as it comes; the total and the facets (a count,
  // slower on a large store when a facet is not in the rollups) fill in after.
  const counting = get("count", {
    q: query, facets: FACETS.map(([f, n]) => `${f}:${n}`).join(","), ...scope,
  }).then((count) => ({ count }), (error) => ({ error }));
  const countingMore = get("count", {
    q: query, facets: MORE_FACETS.map(([f, n]) => `${f}:${n}`).join(","), ...scope,
  }).then((count) => ({ count }), (error) => ({ error }));
  let found;
  try {
    found = await get("services", { q: query, cursor, limit: size, ...scope });
  } catch (error) {
    fill(main, error instanceof ApiError && error.position !== null ? queryError(query, error) : errorBox(error));
    side.remove();
    return;
  }
  const first = (pageNo - 1) * size + 1;
  const last = first + found.results.length - 1;
  const exportLink = (format) => h("a", {
    class: "button secondary", href: apiUrl("export", { q: query, format, ...scope }),
    download: `brokerscan-export.${format}`, id: `export-${format}`,
  }, `Export ${format.toUpperCase()}`);
  const next = new URLSearchParams(location.search);
  next.set("cursor", found.cursor || "");
  next.set("page", String(pageNo + 1));
  const firstPage = new URLSearchParams(location.search);
  firstPage.delete("cursor");
  firstPage.delete("page");
  const range = found.results.length ? `${fmt(first)}–${fmt(last)}` : "no results";
  const shown = h("span", {}, `${range} of …`);
  const totalBox = h("p", { id: "total", style: "margin:0" }, shown,
    h("span", { class: "muted small" }, ` · ${found.view} · ${Math.round(found.query_ms)} ms`));
  fill(main,
    h("div", { class: "row", style: "justify-content:space-between;margin-bottom:0.5rem" },
      totalBox, h("div", { class: "row" }, exportLink("csv"), exportLink("jsonl"))),
    found.results.length ? results(found.results) : null,
    h("nav", { class: "pager", "aria-label": "pages" },
      cursor ? h("a", { href: `/search?${firstPage}`, id: "first-page" }, "« First page") : null,
      found.cursor ? h("a", { href: `/search?${next}`, id: "next-page", rel: "next" }, "Next page »") : null));
  performance.mark("brokerscan:results");

  const [counted, names] = await Promise.all([counting, countries()]);
  if (counted.error) {
    fill(shown, `${range} of ?`);
    side.append(errorBox(counted.error, "total and facets"));
    return;
  }
  const total = counted.count.total;
  totalBox.dataset.total = String(total);
  fill(shown, found.results.length ? `${range} of ${fmt(total)} ${total === 1 ? "result" : "results"}`
    : `no results (${fmt(total)})`);
  side.append(...facetList(counted.count, query, view, names, FACETS));
  const more = await countingMore;
  if (more.error) {
    side.append(errorBox(more.error, "more facets"));
    return;
  }
  side.append(...facetList(more.count, query, view, names, MORE_FACETS));
  performance.mark("brokerscan:facets");
}

/** Ask the API whether the query in the box reads, a moment after each key. */
function checkAsYouType(input, status) {
  let timer = null;
  let inflight = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      inflight?.abort();
      inflight = new AbortController();
      const q = input.value;
      try {
        const answer = await get("query/explain", { q }, { signal: inflight.signal });
        if (answer.valid) {
          fill(status, q ? h("p", { class: "muted small" }, `reads: ${answer.fields.join(", ") || "everything"}`) : "");
        } else {
          fill(status, queryError(q, { message: answer.error, position: answer.position, column: answer.column }));
        }
      } catch (error) {
        if (error.name !== "AbortError") fill(status, errorBox(error));
      }
    }, 350);
  });
}

page(render);
