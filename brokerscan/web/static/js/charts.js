// Charts with Apache ECharts (vendored, SVG renderer): horizontal bars whose bars link to
// a search, the world map coloured by count, and the timeline. Every chart also has its
// numbers as a table of links (keyboard and screen-reader users get the same links), and
// the aria module describes it. Tooltips escape what they show: values come from the
// Internet.
import { init, registerMap } from "/assets/vendor/echarts.js";
import { countries, esc, fmt, h, table } from "./ui.js";

const INK = "#17202a";
const MUTED = "#4a5560";
const PALETTE = ["#1d5fc2", "#c2571d", "#2a8a4a", "#8a3fb0", "#b0233f", "#5b6b7a"];
const charts = [];

let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => charts.forEach((c) => c.resize()), 120);
});

function make(el) {
  const chart = init(el, null, { renderer: "svg" });
  charts.push(chart);
  return chart;
}

const base = {
  aria: { enabled: true },
  animation: false,
  textStyle: { color: INK, fontFamily: "system-ui, sans-serif" },
  color: PALETTE,
};

/** A card's table of the chart's numbers, each label a link. */
function numbers(items, label = "value") {
  return h("details", { class: "table" }, h("summary", {}, "as a table"),
    table([[label, (i) => (i.href ? h("a", { href: i.href }, i.label) : i.label)],
      ["count", (i) => fmt(i.value), { num: true }]], items, { class: "compact" }));
}

/** Horizontal bars, largest first: *items* are {label, value, href}. A click on a bar
 *  opens its href (the search that counts it). */
export function bars(container, items, { label = "value", empty = "nothing to count" } = {}) {
  if (!items.length) {
    container.append(h("p", { class: "muted small" }, empty));
    return;
  }
  const el = h("div", { class: "chart", style: `height:${Math.max(90, 28 * items.length + 40)}px` });
  container.append(el, numbers(items, label));
  const shown = [...items].reverse(); // ECharts draws categories bottom-up
  const chart = make(el);
  chart.setOption({
    ...base,
    grid: { left: 8, right: 48, top: 4, bottom: 4, containLabel: true },
    tooltip: {
      trigger: "item",
      formatter: (p) => `${esc(p.name)}<br><b>${esc(fmt(p.value))}</b>`,
    },
    xAxis: { type: "value", show: false },
    yAxis: {
      type: "category", data: shown.map((i) => i.label),
      axisLabel: { color: INK, width: 150, overflow: "truncate" },
      axisTick: { show: false },
    },
    series: [{
      type: "bar", data: shown.map((i) => i.value), barMaxWidth: 22, cursor: "pointer",
      label: { show: true, position: "right", color: MUTED, formatter: (p) => fmt(p.value) },
      itemStyle: { color: PALETTE[0], borderRadius: [0, 3, 3, 0] },
    }],
  });
  chart.on("click", (p) => {
    const item = shown[p.dataIndex];
    if (item && item.href) location.assign(item.href);
  });
}

let worldMap = null;

async function world() {
  worldMap ??= fetch("/assets/vendor/world.json").then((r) => r.json()).then((geo) => {
    registerMap("world", geo);
    return geo;
  });
  return worldMap;
}

/** The world map: *counts* are {code, value} by ISO alpha-2 code; *href(code)* the search
 *  a click on a country opens. */
export async function map(container, counts, href) {
  const [, names] = await Promise.all([world(), countries()]);
  const el = h("div", { class: "map", role: "img", "aria-label": "world map of counts by country" });
  container.append(el);
  const max = Math.max(1, ...counts.map((c) => c.value));
  const chart = make(el);
  chart.setOption({
    ...base,
    tooltip: {
      trigger: "item",
      formatter: (p) => {
        const name = names[p.name] || p.name;
        return `${esc(name)}<br><b>${esc(Number.isFinite(p.value) ? fmt(p.value) : "0")}</b>`;
      },
    },
    visualMap: {
      min: 0, max, left: 8, bottom: 8, calculable: false, text: [fmt(max), "0"],
      inRange: { color: ["#dbe7f7", "#7fa7df", "#1d5fc2", "#0d2d63"] },
      textStyle: { color: INK },
    },
    series: [{
      type: "map", map: "world", roam: true, nameProperty: "name",
      emphasis: { label: { show: false }, itemStyle: { areaColor: "#f0a500" } },
      select: { disabled: true },
      itemStyle: { areaColor: "#eef1f4", borderColor: "#9aa5b1", borderWidth: 0.5 },
      data: counts.map((c) => ({ name: c.code, value: c.value })),
    }],
  });
  chart.on("click", (p) => {
    if (p.name && !p.name.startsWith("(")) location.assign(href(p.name));
  });
  return names;
}

/** The timeline: *labels* along x, *series* are {name, values, type: "line"|"bar",
 *  stack}; *href(index)* what a click on a point opens. */
export function timeline(container, labels, series, href = null) {
  const el = h("div", { class: "chart tall" });
  container.append(el);
  const chart = make(el);
  chart.setOption({
    ...base,
    legend: { top: 0, textStyle: { color: INK } },
    grid: { left: 8, right: 16, top: 36, bottom: labels.length > 12 ? 48 : 8, containLabel: true },
    tooltip: {
      trigger: "axis",
      formatter: (ps) => [esc(ps[0].axisValue),
        ...ps.map((p) => `${p.marker}${esc(p.seriesName)}: <b>${esc(fmt(p.value))}</b>`)].join("<br>"),
    },
    xAxis: { type: "category", data: labels, axisLabel: { color: INK, hideOverlap: true } },
    yAxis: { type: "value", minInterval: 1, axisLabel: { color: MUTED } },
    dataZoom: labels.length > 12 ? [{ type: "slider", height: 18, bottom: 4 }] : [],
    series: series.map((s) => ({
      name: s.name, type: s.type || "line", data: s.values, stack: s.stack,
      symbolSize: 7, barMaxWidth: 18, connectNulls: false, cursor: href ? "pointer" : "default",
    })),
  });
  if (href) {
    chart.on("click", (p) => {
      const target = href(p.dataIndex, p.seriesName);
      if (target) location.assign(target);
    });
  }
}
