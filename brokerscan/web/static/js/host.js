// One address: every observation of it across sweeps (newest first, the newest of each
// service open), with the TLS certificate and chain, each MQTT attempt per protocol level
// with its code and the 5.0 properties, the AMQP server properties and mechanisms, the
// network and country, and the raw reply as hex and as text. Records are ScanResult JSON
// (docs/results.md); `raw` is base64.
import { get } from "./api.js";
import {
  CONNACK, LEVELS, countries, fill, fmt, h, page, searchHref, sweepHref, table, title, when,
} from "./ui.js";

function kv(rows) {
  const shown = rows.filter(([, value]) => value !== null && value !== undefined && value !== "" &&
    !(Array.isArray(value) && !value.length));
  if (!shown.length) return null;
  return h("div", { class: "scroll" }, h("table", { class: "kv compact" }, h("tbody", {},
    shown.map(([key, value]) => h("tr", {}, h("th", { scope: "row" }, key),
      h("td", {}, value instanceof Node ? value : Array.isArray(value) ? value.join(", ") : String(value)))))));
}

const yes = (flag, good = true) => (flag === null || flag === undefined ? null
  : h("span", { class: `badge ${flag === good ? "good" : "bad"}` }, flag ? "yes" : "no"));

function certificate(cert) {
  return kv([
    ["subject", h("code", { class: "cert-subject" }, cert.subject)],
    ["issuer", h("code", {}, cert.issuer)],
    ["common name", cert.subject_cn],
    ["names (SAN)", cert.sans],
    ["valid", `${when(cert.not_before)} to ${when(cert.not_after)}`],
    ["expired", yes(cert.expired, false)],
    ["not yet valid", cert.not_yet_valid ? yes(true, false) : null],
    ["self-signed", yes(cert.self_signed, false)],
    ["key", [cert.key_type, cert.key_bits ? `${cert.key_bits} bits` : null, cert.key_curve].filter(Boolean).join(" ")],
    ["signature", cert.signature_algorithm],
    ["serial", h("code", {}, cert.serial)],
    ["SHA-256", h("a", { href: searchHref(`cert.sha256:${cert.sha256}`), class: "mono" }, cert.sha256)],
  ]);
}

/** The chain as the record has it: the leaf's subject and issuer, then the certificates
 *  the server sent after it (the record keeps the leaf in full and the chain's length;
 *  a record with a `chain` list shows each one). */
function chain(tls) {
  const items = [];
  const listed = Array.isArray(tls.chain) ? tls.chain : null;
  if (listed) {
    listed.forEach((c, i) => items.push(h("li", {}, h("b", {}, i === 0 ? "leaf " : `#${i} `),
      h("code", {}, c.subject || String(c)), c.issuer ? h("div", { class: "small muted" }, `issued by ${c.issuer}`) : null)));
  } else if (tls.certificate) {
    const cert = tls.certificate;
    items.push(h("li", {}, h("b", {}, "leaf "), h("code", {}, cert.subject),
      h("div", { class: "small muted" }, cert.self_signed ? "signs itself" : `issued by ${cert.issuer}`)));
    if (tls.chain_length > 1) {
      items.push(h("li", {}, `${tls.chain_length - 1} more certificate${tls.chain_length > 2 ? "s" : ""} sent by the server (not kept in the record)`));
    }
  }
  return h("div", { class: "tls-chain" },
    h("p", { class: "small", style: "margin:0.3rem 0" }, `chain: ${tls.chain_length} certificate${tls.chain_length === 1 ? "" : "s"} presented`),
    h("ol", { class: "chain" }, items));
}

function tlsSection(tls, retried) {
  return h("section", { class: "tls" }, h("h3", {}, "TLS"),
    kv([
      ["handshake", tls.handshake_completed ? "completed" : "failed"],
      ["retried", retried ? "yes: the plaintext probe met a TLS record, so it was tried again inside TLS" : null],
      ["error", tls.error],
      ["version", tls.version],
      ["cipher", tls.cipher],
      ["ALPN", tls.alpn],
      ["trusted", yes(tls.trusted)],
      ["why not trusted", tls.trust_error],
      ["client certificate required", tls.client_certificate_required ? "yes" : null],
    ]),
    tls.certificate ? [h("h3", {}, "Certificate"), certificate(tls.certificate), chain(tls)] : null);
}

function mqttSection(mqtt) {
  const props = mqtt.properties
    ? Object.entries(mqtt.properties).filter(([, v]) => v !== null && !(Array.isArray(v) && !v.length))
    : [];
  return h("section", { class: "mqtt" }, h("h3", {}, "MQTT"),
    kv([
      ["answered at level", `${LEVELS[mqtt.protocol_level] || mqtt.protocol_level}`],
      ["CONNACK", `${mqtt.return_code} ${mqtt.return_code_name}`],
      ["anonymous", mqtt.anonymous === null ? "not told" : yes(mqtt.anonymous, false)],
      ["session present", mqtt.session_present ? "yes" : "no"],
      ["levels accepted", (mqtt.accepted_levels || []).map((l) => LEVELS[l] || l)],
      ["levels refused", (mqtt.refused_levels || []).map((l) => LEVELS[l] || l)],
      ["client id sent", mqtt.client_id ? h("code", {}, mqtt.client_id) : null],
    ]),
    mqtt.attempts && mqtt.attempts.length ? [h("h3", {}, "CONNECT attempts"),
      table([
        ["level", (a) => `MQTT ${LEVELS[a.protocol_level] || a.protocol_level}`],
        ["answer", (a) => a.answer],
        ["code", (a) => (a.return_code === null || a.return_code === undefined ? "–"
          : `${a.return_code} ${CONNACK[a.return_code] || ""}`.trim())],
      ], mqtt.attempts, { class: "compact attempts" })] : null,
    props.length ? [h("h3", {}, "MQTT 5.0 CONNACK properties"),
      kv(props.map(([k, v]) => [k.replaceAll("_", " "), Array.isArray(v) ? v.map((p) => p.join("=")) : v]))] : null,
    mqtt.product ? [h("h3", {}, "Broker product"), kv([
      ["product", mqtt.product.name], ["version", mqtt.product.version],
      ["fingerprint", mqtt.product.rule], ["evidence", mqtt.product.evidence],
      ["source", mqtt.product.source]])] : null,
    mqtt.sys ? [h("h3", {}, "$SYS/broker/version"), kv([
      ["answer", mqtt.sys.answer], ["SUBACK", mqtt.sys.suback], ["version", mqtt.sys.version],
      ["packets read", mqtt.sys.packets]])] : null,
    mqtt.unasked && mqtt.unasked.length ? [h("h3", {}, "Packets the broker sent unasked"),
      table([["type", (u) => u.packet_type], ["topic", (u) => u.topic || "–"],
        ["payload", (u) => h("code", {}, u.payload || "")], ["QoS", (u) => u.qos],
        ["retain", (u) => (u.retain ? "yes" : "no")]], mqtt.unasked, { class: "compact" })] : null);
}

function websocketSection(ws) {
  return h("section", { class: "websocket" }, h("h3", {}, "WebSocket"),
    kv([["path", ws.path], ["subprotocol", ws.subprotocol], ["server", ws.server],
      ["close code", ws.close_code]]),
    ws.tries && ws.tries.length ? table([
      ["path", (t) => h("code", {}, t.path)], ["subprotocol offered", (t) => t.subprotocol],
      ["HTTP status", (t) => (t.status ?? "–")], ["answer", (t) => t.answer], ["error", (t) => t.error || ""],
    ], ws.tries, { class: "compact" }) : null);
}

function amqpSection(amqp) {
  const sp = amqp.server_properties || {};
  const caps = Object.entries(sp.capabilities || {});
  const other = Object.entries(sp.other || {});
  return h("section", { class: "amqp" }, h("h3", {}, "AMQP"),
    kv([
      ["family", amqp.family],
      ["protocol header", amqp.protocol_header],
      ["version", amqp.version_major !== null && amqp.version_major !== undefined ? `${amqp.version_major}-${amqp.version_minor}` : null],
      ["product", sp.product],
      ["product version", sp.version],
      ["platform", sp.platform],
      ["cluster name", sp.cluster_name],
      ["copyright", sp.copyright],
      ["information", sp.information],
      ["mechanisms", amqp.mechanisms],
      ["locales", amqp.locales],
    ]),
    caps.length ? [h("h3", {}, "Capabilities"), kv(caps.map(([k, v]) => [k, v ? "yes" : "no"]))] : null,
    other.length ? [h("h3", {}, "Other server properties"), kv(other.map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]))] : null,
    amqp.sasl ? [h("h3", {}, "AMQP 1.0 SASL"), kv([
      ["header", amqp.sasl.protocol_header], ["mechanisms", amqp.sasl.mechanisms],
      ["ANONYMOUS offered", amqp.sasl.anonymous_offered === null || amqp.sasl.anonymous_offered === undefined
        ? null : yes(amqp.sasl.anonymous_offered, false)],
      ["error", amqp.sasl.error]])] : null);
}

/** The reply's bytes as a hex dump (offset, 16 bytes, printable ASCII) and as text. */
function raw(b64) {
  const binary = atob(b64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  const lines = [];
  for (let off = 0; off < bytes.length; off += 16) {
    const chunk = bytes.slice(off, off + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(chunk, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes)
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  return h("section", { class: "raw" }, h("h3", {}, `Raw reply (${fmt(bytes.length)} bytes)`),
    h("pre", { class: "hex", "aria-label": "hex dump" }, lines.join("\n")),
    h("details", {}, h("summary", {}, "as text"), h("pre", { class: "hex raw-text" }, text)));
}

function observation(record, open, names) {
  const geo = record.geo || {};
  const asn = record.asn || {};
  const country = geo.country ? `${names[geo.country] || geo.country} (${geo.country})` : null;
  return h("details", { class: "card obs", open, dataset: { port: String(record.port), sweep: record.sweep_id || "" } },
    h("summary", {}, h("b", {}, `${record.port}/${record.transport}`), " ",
      record.protocol || "no protocol", " · ", record.status, " · ",
      h("span", { class: "muted" }, when(record.observed_at))),
    kv([
      ["sweep", record.sweep_id ? h("a", { href: sweepHref(record.sweep_id) }, record.sweep_id) : null],
      ["observed", when(record.observed_at)],
      ["probes tried", record.probes],
      ["took", `${fmt(Math.round(record.duration_ms))} ms`],
      ["error", record.error],
      ["network", asn.number ? h("a", { href: searchHref(`asn:${asn.number}`) }, `AS${asn.number}${asn.organization ? ` ${asn.organization}` : ""}`) : (asn.reserved ? "reserved address (no owner)" : null)],
      ["prefix", asn.network],
      ["country", country ? h("a", { href: searchHref(`country:${geo.country}`) }, country) : (geo.reserved ? "reserved address" : null)],
      ["city", geo.city],
    ]),
    record.tls ? tlsSection(record.tls, record.tls_retried) : null,
    record.websocket ? websocketSection(record.websocket) : null,
    record.mqtt ? mqttSection(record.mqtt) : null,
    record.amqp ? amqpSection(record.amqp) : null,
    record.raw ? raw(record.raw) : null);
}

async function render(root) {
  const ip = decodeURIComponent(location.pathname.split("/").pop() || "");
  title(`Host ${ip}`);
  const [host, names] = await Promise.all([get(`hosts/${encodeURIComponent(ip)}`), countries()]);
  const records = host.observations;
  const services = new Map();
  for (const r of records) {
    const key = `${r.port}/${r.transport}`;
    if (!services.has(key)) services.set(key, { key, latest: r, count: 0 });
    services.get(key).count += 1;
  }
  const seen = new Set();
  fill(root,
    h("p", {}, `${fmt(records.length)} observation${records.length === 1 ? "" : "s"} of ${services.size} service${services.size === 1 ? "" : "s"}. `,
      h("a", { href: searchHref(`ip:${host.ip}`) }, "Search this address")),
    table([
      ["service", (s) => s.key],
      ["protocol", (s) => s.latest.protocol || "–"],
      ["latest status", (s) => s.latest.status],
      ["latest observation", (s) => when(s.latest.observed_at)],
      ["observations", (s) => fmt(s.count), { num: true }],
    ], [...services.values()], { id: "services" }),
    h("h2", { style: "margin-top:1rem" }, "Observations, newest first"),
    records.map((r) => {
      const key = `${r.port}/${r.transport}`;
      const open = !seen.has(key);
      seen.add(key);
      return observation(r, open, names);
    }));
}

page(render);
