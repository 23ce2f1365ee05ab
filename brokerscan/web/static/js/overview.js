// The overview: the census's headline numbers (each the total of the search it links to),
// its breakdowns, top countries and networks, the world map and the timeline across
// sweeps; for the current view or one sweep (?sweep=ID).
import { get, limited } from "./api.js";
import {
  CONNACK, LEVELS, countries, errorBox, fill, fmt, h, page, params, quote, searchHref,
} from "./ui.js";

/** The headline: label, the query it counts (the census report's own queries). */
const HEADLINE = [
  ["MQTT servers", "protocol:mqtt"],
  ["MQTT on 1883 without TLS", "protocol:mqtt port:1883 tls:false"],
  ["MQTT on 8883 with TLS", "protocol:mqtt port:8883 tls:true"],
  ["MQTT accepting anonymous clients", "protocol:mqtt anonymous:true"],
  ["AMQP services", "protocol:amqp"],
];

/** Above this many observations in all, the timeline's "newly exposed / gone" (one diff
 *  of two whole sweeps per point) waits for a click instead of starting by itself. */
const DIFF_BY_ITSELF = 1_000_000;
const DIFF_POINTS = 6;

/** A card in *grid*, in the page already (a chart needs its size); its body. */
function card(grid, heading, wide = false) {
  const body = h("div");
  grid.append(h("section", { class: `card${wide ? " wide" : ""}`, "aria-label": heading },
    h("h2", {}, heading), body));
  return body;
}

function viewPicker(sweeps, view) {
  const select = h("select", { id: "view", name: "sweep" },
    h("option", { value: "" }, "current view (every service as last seen)"),
    sweeps.map((s) => h("option", { value: s.id, selected: s.id === view.sweep },
      `${s.name || s.id} · ${s.day || ""} · ${fmt(s.observations)} observations`)),
    view.sweep && !sweeps.some((s) => s.id === view.sweep)
      ? h("option", { value: view.sweep, selected: true }, view.sweep) : null);
  select.addEventListener("change", () => {
    const next = new URLSearchParams();
    if (select.value) next.set("sweep", select.value);
    location.assign(`/${next.toString() ? `?${next}` : ""}`);
  });
  return h("div", { class: "row", style: "margin-bottom:0.75rem" },
    h("label", { for: "view" }, "View"), select);
}

function headline(totals, view) {
  return h("div", { class: "headline", id: "headline" }, HEADLINE.map(([label, q], i) =>
    h("a", { href: searchHref(q, view), dataset: { query: q } },
      h("span", { class: "n", dataset: { count: String(totals[i]) } }, fmt(totals[i])),
      h("span", { class: "what" }, label))));
}

function sorted(object) {
  return Object.entries(object || {}).sort((a, b) => b[1] - a[1] || String(a[0]).localeCompare(b[0]));
}

function byPort(object, protocol, view) {
  return sorted(object).map(([key, value]) => {
    const [port, transport] = key.split("/");
    return { label: key, value,
      href: searchHref(`protocol:${protocol} port:${port} transport:${transport}`, view) };
  });
}

/** "RabbitMQ 3.12.1" -> the search for that product and version: the label is the
 *  report's "product version" (either may be "?"); *products* are the known product
 *  names, longest first, so that a product with a space in its name is kept whole. */
function productItem(label, value, products, view) {
  const product = products.find((p) => label.startsWith(`${p} `));
  let q = "protocol:amqp";
  if (label.startsWith("(AMQP ")) {
    const family = label.slice(6).split(",")[0];
    q += ` amqp.family:${quote(family)} NOT product:*`;
  } else if (product !== undefined || label.startsWith("? ")) {
    const version = label.slice((product ?? "?").length + 1);
    q += product !== undefined ? ` product:${quote(product)}` : " NOT product:*";
    q += version === "?" ? " NOT version:*" : ` version:${quote(version)}`;
  } else {
    return { label, value };
  }
  return { label, value, href: searchHref(q, view) };
}

async function render(root) {
  // The charts (ECharts, the largest file) load while the headline is fetched and shown:
  // the first meaningful paint waits for neither.
  const charting = import("./charts.js");
  charting.catch(() => null); // awaited below; a page that stops before must not warn
  const view = { sweep: params().get("sweep") || "" };
  const scope = view.sweep ? { sweep: view.sweep } : {};
  const sweepsRequest = get("sweeps").catch(() => []); // the view picker can do without
  const totals = await Promise.all(HEADLINE.map(([, q]) =>
    get("count", { q, ...scope }).then((c) => c.total)));
  const note = (sweeps) => {
    const shown = sweeps.find((s) => s.id === view.sweep);
    return h("p", { class: "muted small", id: "view-note" }, view.sweep
      ? `What sweep ${shown && shown.name ? `${shown.name} (${view.sweep})` : view.sweep} observed.`
      : "The current view: every service as its latest observation showed it.");
  };
  // the headline does not wait for the list of sweeps (the view picker fills in after)
  const picker = viewPicker([], view);
  const about = note([]);
  fill(root, picker, headline(totals, view), about);
  performance.mark("brokerscan:headline");
  const sweeps = await sweepsRequest;
  picker.replaceWith(viewPicker(sweeps, view));
  about.replaceWith(note(sweeps));

  // Every card fills in when its own answer comes: the rollups answer in milliseconds,
  // the report (a dozen grouped counts over the whole view) can take far longer.
  const grid = h("div", { class: "cards" });
  root.append(grid);
  const slot = (heading, wide = false) => {
    const body = card(grid, heading, wide);
    body.append(h("p", { class: "muted small" }, "counting…"));
    return body;
  };
  const at = {
    mqttPorts: slot("MQTT by port"), connack: slot("CONNACK code (anonymous CONNECT)"),
    levels: slot("MQTT levels accepted"), tls: slot("TLS versions"), certs: slot("Certificates"),
    amqpPorts: slot("AMQP by port"), product: slot("AMQP product and version"),
    family: slot("AMQP protocol family"), top: slot("Top countries"),
    asns: slot("Top networks (ASN)"), world: slot("Where they are", true),
    time: slot("Across sweeps", true),
  };
  const { bars, map, timeline } = await charting;
  const draw = (body, items, options) => {
    body.replaceChildren();
    bars(body, items, options);
  };
  const failed = (...bodies) => (error) => bodies.forEach((b) => fill(b, errorBox(error)));

  const fromReport = Promise.all([
    get("report", scope), get("count", { q: "protocol:amqp", facets: "product:50", ...scope }),
  ]).then(([report, amqp]) => {
    draw(at.mqttPorts, byPort(report.mqtt.by_port, "mqtt", view), { label: "port" });
    draw(at.levels, sorted(report.mqtt.by_accepted_level).map(([level, value]) => ({
      label: `MQTT ${LEVELS[level] || level}`, value,
      href: searchHref(`protocol:mqtt mqtt.level:${quote(LEVELS[level] || level)}`, view),
    })), { label: "level" });
    draw(at.tls, sorted(report.tls.by_version).map(([version, value]) => ({
      label: version, value, href: searchHref(`tls.version:${quote(version)}`, view),
    })), { label: "version", empty: "no TLS handshakes" });
    const t = report.tls;
    draw(at.certs, [
      { label: "TLS handshakes", value: t.handshakes, href: searchHref("tls:true tls.version:*", view) },
      { label: "self-signed", value: t.self_signed, href: searchHref("tls.version:* cert.self_signed:true", view) },
      { label: "expired", value: t.expired, href: searchHref("tls.version:* cert.expired:true", view) },
      { label: "trusted", value: t.trusted, href: searchHref("tls.version:* cert.trusted:true", view) },
      { label: "not trusted", value: t.handshakes - t.trusted, href: searchHref("tls.version:* NOT cert.trusted:true", view) },
    ].filter(() => t.handshakes > 0), { label: "certificates", empty: "no TLS handshakes" });
    draw(at.amqpPorts, byPort(report.amqp.by_port, "amqp", view), { label: "port" });
    const products = amqp.facets.product.map((f) => String(f.value))
      .sort((a, b) => b.length - a.length);
    draw(at.product, sorted(report.amqp.by_product).slice(0, 15)
      .map(([label, value]) => productItem(label, value, products, view)), { label: "product" });
    draw(at.family, sorted(report.amqp.by_family).map(([name, value]) => ({
      label: name, value, href: searchHref(`protocol:amqp amqp.family:${quote(name)}`, view),
    })), { label: "family" });
    depth(report, grid, at.top.parentElement, bars, view);
  }).catch(failed(at.mqttPorts, at.levels, at.tls, at.certs, at.amqpPorts, at.product, at.family));

  const connack = get("count", { q: "protocol:mqtt", facets: "mqtt.return_code:20", ...scope })
    .then((mqtt) => draw(at.connack, mqtt.facets["mqtt.return_code"].map((f) => ({
      label: `${f.value} ${CONNACK[f.value] || ""}`.trim(), value: f.count,
      href: searchHref(`protocol:mqtt mqtt.return_code:${f.value}`, view),
    })), { label: "code" }))
    .catch(failed(at.connack));

  const places = Promise.all([get("count", { facets: "country:250,asn:10", ...scope }), countries()])
    .then(async ([counts, names]) => {
      draw(at.top, counts.facets.country.slice(0, 10).map((f) => ({
        label: `${names[f.value] || f.value} (${f.value})`, value: f.count,
        href: searchHref(`country:${f.value}`, view),
      })), { label: "country", empty: "no country known (loopback and private addresses have none)" });
      const asnItems = counts.facets.asn.map((f) => ({
        label: f.label ? `AS${f.value} ${f.label}` : `AS${f.value}`, value: f.count,
        href: searchHref(`asn:${f.value}`, view), asn: f.value,
      }));
      at.world.replaceChildren();
      await map(at.world, counts.facets.country.map((f) => ({ code: String(f.value), value: f.count })),
        (code) => searchHref(`country:${code}`, view));
      at.world.append(h("p", { class: "muted small" },
        `${fmt(counts.other.country || 0)} without a known country. Shapes: Natural Earth.`));
      draw(at.asns, asnItems, { label: "network", empty: "no network known" });
    }).catch(failed(at.top, at.asns, at.world));

  at.time.replaceChildren();
  const across = timelineCard(at.time, sweeps, timeline).catch(failed(at.time));
  await Promise.all([fromReport, connack, places, across]);
}

/** The report's protocol-depth breakdowns (schema 2), when the API's report has them,
 *  placed before *before*. */
function depth(report, grid, before, bars, view) {
  const add = (heading) => {
    const body = h("div");
    grid.insertBefore(h("section", { class: "card", "aria-label": heading }, h("h2", {}, heading), body), before);
    return body;
  };
  if (report.mqtt.by_product) {
    bars(add("MQTT product (fingerprint)"), sorted(report.mqtt.by_product).slice(0, 15)
      .map(([label, value]) => ({ label, value })), { label: "product" });
  }
  if (report.mqtt.websocket_endpoints) {
    bars(add(`MQTT over WebSocket (${fmt(report.mqtt.over_websocket || 0)})`),
      sorted(report.mqtt.websocket_endpoints).map(([label, value]) => ({
        label, value, href: searchHref(`protocol:mqtt transport:${quote(label.split(" ")[0])}`, view),
      })), { label: "endpoint", empty: "none" });
  }
  if (report.amqp.amqp10_sasl_mechanisms) {
    bars(add("AMQP 1.0 SASL mechanisms"), sorted(report.amqp.amqp10_sasl_mechanisms)
      .map(([label, value]) => ({ label, value })), { label: "mechanisms", empty: "none" });
  }
}

async function timelineCard(body, sweeps, timeline) {
  const mode = h("select", { id: "interval", "aria-label": "interval" },
    h("option", { value: "sweep" }, "per sweep"), h("option", { value: "day" }, "per day"));
  const chartBox = h("div");
  const note = h("div", { class: "small muted" });
  body.append(h("div", { class: "row" }, h("label", { for: "interval" }, "Counts"), mode), chartBox, note);
  const byId = Object.fromEntries(sweeps.map((s) => [s.id, s]));
  let diffs = null;

  async function draw() {
    const interval = mode.value;
    const series = await Promise.all([
      ["MQTT", "protocol:mqtt"], ["AMQP", "protocol:amqp"], ["MQTT anonymous", "protocol:mqtt anonymous:true"],
    ].map(([name, q]) => get("trends", { q, interval }).then((t) => ({ name, q, buckets: t.buckets }))));
    const keys = [...new Set(series.flatMap((s) => s.buckets.map((b) => b.bucket)))];
    if (interval === "sweep") keys.sort((a, b) => order(a) - order(b));
    else keys.sort();
    const labels = keys.map((k) => (interval === "sweep" ? label(byId[k], k) : k));
    const lines = series.map((s) => {
      const counts = Object.fromEntries(s.buckets.map((b) => [b.bucket, b.count]));
      return { name: s.name, values: keys.map((k) => counts[k] ?? 0) };
    });
    if (interval === "sweep" && diffs) {
      const at = (k) => diffs.find((d) => d.b === k);
      lines.push({ name: "newly exposed", type: "bar", values: keys.map((k) => (at(k) ? at(k).counts.new : null)) });
      lines.push({ name: "gone", type: "bar", values: keys.map((k) => (at(k) ? at(k).counts.gone : null)) });
    }
    chartBox.replaceChildren();
    if (!keys.length) {
      chartBox.append(h("p", { class: "muted small" }, "no observations yet"));
      return;
    }
    timeline(chartBox, labels, lines, (index, seriesName) => {
      const q = (series.find((s) => s.name === seriesName) || series[0]).q;
      if (interval !== "sweep") return searchHref(q, { at: keys[index] });
      if ((seriesName === "newly exposed" || seriesName === "gone") && index > 0) {
        return `/changes?a=${encodeURIComponent(keys[index - 1])}&b=${encodeURIComponent(keys[index])}`;
      }
      return `/sweeps/${encodeURIComponent(keys[index])}`;
    });
    return keys;
  }

  function order(id) {
    const s = byId[id];
    const index = sweeps.indexOf(s); // the API lists sweeps newest first
    return s ? -index : 0;
  }

  async function compare(keys) {
    const pairs = [];
    for (let i = Math.max(1, keys.length - DIFF_POINTS); i < keys.length; i += 1) pairs.push([keys[i - 1], keys[i]]);
    note.replaceChildren(h("span", {}, "comparing sweeps…"));
    const answers = await limited(pairs.map(([a, b]) => () => get("diff", { a, b, limit: 1 })), 1);
    diffs = answers.filter((d) => d && d.counts);
    note.replaceChildren(h("span", {}, pairs.length === 1 ? "newly exposed and gone: the last sweep against the one before"
      : `newly exposed and gone: each of the last ${pairs.length} sweeps against the one before`));
    await draw();
  }

  mode.addEventListener("change", () => draw().catch((e) => note.replaceChildren(errorBox(e))));
  const keys = await draw();
  const total = sweeps.reduce((n, s) => n + (s.observations || 0), 0);
  if (keys && keys.length > 1) {
    if (total <= DIFF_BY_ITSELF) {
      await compare(keys).catch((e) => note.replaceChildren(errorBox(e, "comparing sweeps")));
    } else {
      note.replaceChildren(h("button", {
        type: "button", class: "secondary",
        onclick: () => compare(keys).catch((e) => note.replaceChildren(errorBox(e, "comparing sweeps"))),
      }, `Compare the last ${Math.min(DIFF_POINTS, keys.length - 1)} sweeps (newly exposed, gone)`));
    }
  }
}

function label(sweep, id) {
  if (!sweep) return id;
  return sweep.name ? `${sweep.name} ${sweep.day || ""}`.trim() : `${sweep.day || ""} ${id.slice(-6)}`.trim();
}

page(render);
