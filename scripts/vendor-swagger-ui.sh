#!/usr/bin/env bash
# Vendor Swagger UI (the API's offline docs page) from the npm registry into
# brokerscan/api/static/swagger-ui/: the minified bundle, its stylesheet and their licences,
# without source maps. Run by hand when upgrading (not by the tests); commit the result.
#
#   bash scripts/vendor-swagger-ui.sh [VERSION]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version="${1:-5.35.0}"
dest=brokerscan/api/static/swagger-ui
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "swagger-ui-dist@${version}" >/dev/null && tar xzf ./*.tgz)
rm -rf "$dest"
mkdir -p "$dest"
for file in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
    cp "$work/package/$file" "$dest/"
done
# The source maps are not shipped: drop the comments that point at them.
sed -i '/^\/\/# sourceMappingURL=/d' "$dest/swagger-ui-bundle.js"
sed -i 's|/\*# sourceMappingURL=[^*]*\*/||' "$dest/swagger-ui.css"
printf 'swagger-ui-dist %s (npm), Apache-2.0: see LICENSE and NOTICE.\nRebuild: bash scripts/vendor-swagger-ui.sh %s\n' \
    "$version" "$version" > "$dest/VERSION"
echo "vendored swagger-ui-dist ${version} into ${dest}"
