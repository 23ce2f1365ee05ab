// Build the dashboard's vendored assets into brokerscan/web/static/vendor/ (run by
// scripts/build_web.sh; the output is committed, so running brokerscan needs no Node.js):
//   echarts.js      ECharts, only the charts and components the dashboard uses, minified ESM
//   world.json      Natural Earth countries (world-atlas 110m TopoJSON -> GeoJSON with
//                   topojson-client), each feature named by its ISO 3166-1 alpha-2 code
//                   (the code enrichment gives), coordinates rounded to 0.01 degree
//   countries.json  alpha-2 code -> English short name (i18n-iso-countries)
//   licenses/       the licence of every package whose code or data ships, and LICENSES.md
import { createRequire } from "node:module";
import { mkdirSync, readFileSync, writeFileSync, copyFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { feature } from "topojson-client";

const require = createRequire(import.meta.url);
const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "brokerscan", "web", "static", "vendor");
const modules = join(here, "node_modules");
const version = (name) => JSON.parse(readFileSync(join(modules, name, "package.json"))).version;

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "licenses"), { recursive: true });

// --- ECharts
await build({
  entryPoints: [join(here, "echarts.entry.js")],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  legalComments: "eof",
  outfile: join(out, "echarts.js"),
  define: { "process.env.NODE_ENV": '"production"', __DEV__: "false" },
});

// --- the world map
const countries = require("i18n-iso-countries");
countries.registerLocale(require("i18n-iso-countries/langs/en.json"));
const topology = require("world-atlas/countries-110m.json");
// Natural Earth shapes without an ISO numeric code: Kosovo has the user-assigned XK
// that GeoIP databases use; the others stay unnamed (drawn, never coloured).
const NO_NUMERIC = { Kosovo: "XK" };
const round = (value) => Array.isArray(value) ? value.map(round) : Math.round(value * 100) / 100;
// ECharts projects longitude linearly, so a ring that crosses the antimeridian (Russia's
// Chukotka, Fiji) would be drawn as a band across the whole map: make each ring's
// longitudes continuous instead (they go a little past 180). Antarctica's rings only run
// along the edge and are left alone.
const unwrap = (ring) => {
  if (ring.every(([, lat]) => lat < -60)) return ring;
  let shift = 0;
  const out = ring.map(([lon, lat], i) => {
    if (i > 0) {
      const previous = ring[i - 1][0] + shift;
      while (lon + shift - previous > 180) shift -= 360;
      while (lon + shift - previous < -180) shift += 360;
    }
    return [lon + shift, lat];
  });
  const mean = out.reduce((sum, [lon]) => sum + lon, 0) / out.length;
  return mean > 180 ? out.map(([lon, lat]) => [lon - 360, lat])
    : mean < -180 ? out.map(([lon, lat]) => [lon + 360, lat]) : out;
};
const polygons = (geometry) => geometry.type === "Polygon"
  ? { type: "Polygon", coordinates: geometry.coordinates.map(unwrap) }
  : { type: "MultiPolygon", coordinates: geometry.coordinates.map((p) => p.map(unwrap)) };
const world = feature(topology, topology.objects.countries);
const features = world.features.map((f) => {
  const code = countries.numericToAlpha2(f.id) ?? NO_NUMERIC[f.properties.name] ?? "";
  return {
    type: "Feature",
    properties: { name: code || `(${f.properties.name})` },
    geometry: polygons({ type: f.geometry.type, coordinates: round(f.geometry.coordinates) }),
  };
});
writeFileSync(join(out, "world.json"),
  JSON.stringify({ type: "FeatureCollection", features }));
// The official short names, but the common ones where those are long-winded.
const names = { ...countries.getNames("en", { select: "official" }),
  US: "United States", CN: "China", RU: "Russia", IR: "Iran", TW: "Taiwan", MK: "North Macedonia",
  CZ: "Czechia", BO: "Bolivia", VE: "Venezuela", TZ: "Tanzania", SY: "Syria",
  LA: "Laos", MD: "Moldova", FM: "Micronesia", XK: "Kosovo" };
const sorted = Object.fromEntries(Object.entries(names).sort());
writeFileSync(join(out, "countries.json"), JSON.stringify(sorted));

// --- licences
const shipped = [
  ["echarts", "Apache-2.0", ["LICENSE", "NOTICE", "licenses/LICENSE-d3"],
   "echarts.js (charts)"],
  ["zrender", "BSD-3-Clause", ["LICENSE"], "echarts.js (ECharts' renderer, bundled in it)"],
  ["tslib", "0BSD", ["LICENSE.txt"], "echarts.js (helpers bundled in it)"],
  ["world-atlas", "ISC", ["LICENSE"],
   "world.json (shapes: Natural Earth 1:110m, public domain, as TopoJSON)"],
  ["topojson-client", "ISC", ["LICENSE"], "world.json (converted with it at build time)"],
  ["i18n-iso-countries", "MIT", ["LICENSE"], "world.json, countries.json (codes and names)"],
];
const rows = [];
for (const [name, licence, files, what] of shipped) {
  for (const file of files) {
    copyFileSync(join(modules, name, file),
      join(out, "licenses", `${name}-${file.replaceAll("/", "-")}`));
  }
  rows.push(`| ${name} | ${version(name)} | ${licence} | ${what} |`);
}
writeFileSync(join(out, "LICENSES.md"), `# Vendored front-end assets

Built by \`scripts/build_web.sh\` from the npm registry (versions pinned in
\`frontend/package-lock.json\`); every licence text is in \`licenses/\`.

| package | version | licence | in |
|---|---|---|---|
${rows.join("\n")}

Natural Earth data (the country shapes in world.json) is in the public domain
(https://www.naturalearthdata.com/about/terms-of-use/).
`);
console.log(`built ${out}`);
