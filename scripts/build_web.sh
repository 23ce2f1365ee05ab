#!/usr/bin/env bash
# Rebuild the dashboard's vendored assets (brokerscan/web/static/vendor/: ECharts, the world
# map, country names, licences) from the npm registry, with the versions pinned in
# frontend/package-lock.json. Run by hand after changing frontend/; the output is committed,
# so neither running brokerscan nor scripts/test.sh needs Node.js.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../frontend"

command -v npm >/dev/null 2>&1 || {
    echo "build_web.sh: npm is needed (apt-get install npm)" >&2
    exit 1
}
npm ci --no-audit --no-fund --ignore-scripts
node build.mjs
