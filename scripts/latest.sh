#!/usr/bin/env bash
# The suite against the newest releases: .venv-latest gets every requirement of pyproject.toml
# resolved afresh at its newest version (uv pip compile --upgrade, caches refreshed), the
# packages that differ from uv.lock are listed, and pytest runs there (the whole suite; give
# pytest arguments to narrow it, e.g. `scripts/latest.sh tests/unit`).
#
# Not part of CI, which must be reproducible (uv.lock); run it before each stop, so that an
# upstream release that breaks brokerscan is found by us, not by a user's fresh machine. When it
# passes, `.uv/bin/uv lock --upgrade` moves the lock to the same versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
# shellcheck source=scripts/uv.sh
. scripts/uv.sh
# Bytecode compiled at install, as pip does: an old release's invalid escape (netaddr 0.10)
# then warns once there, not at every import under the suite's filterwarnings = error.
# (.venv skips it: most of a warm set-up's time, and the locked releases import cleanly.)
export UV_COMPILE_BYTECODE=1
say() { printf 'latest: %s\n' "$*"; }
venv=.venv-latest
pins=$venv/pins.txt

[ -x "$venv/bin/python" ] || uv_run venv --quiet "$venv"
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
.venv/bin/python scripts/floors.py requirements | tail -n +2 >"$requirements"  # less the build system's
if ! out="$(
    uv_run pip compile "$requirements" --upgrade --refresh --no-header --quiet \
        --python "$venv/bin/python" -o "$pins" &&
    uv_run pip sync --quiet --python "$venv/bin/python" "$pins" &&
    uv_run pip install --quiet --python "$venv/bin/python" --no-deps -e .
    2>&1)"; then
    printf '%s\n' "$out" | tail -n 20 >&2
    say "resolving or installing the newest releases failed"
    exit 1
fi

say "newer than uv.lock:"
.venv/bin/python - "$pins" <<'PY'
import sys, tomllib
sys.path.insert(0, "scripts")
from floors import pinned
from packaging.utils import canonicalize_name
lock = tomllib.load(open("uv.lock", "rb"))
locked = {canonicalize_name(p["name"]): p["version"] for p in lock["package"]}
newest = pinned(open(sys.argv[1], encoding="utf-8").read())
changed = [f"  {name} {locked.get(name, '(new)')} -> {version}"
           for name, version in sorted(newest.items()) if locked.get(name) != version]
print("\n".join(changed) if changed else "  nothing: uv.lock is the newest")
PY

bash scripts/services.sh start
export BROKERSCAN_SCOPE=127.0.0.0/8
say "pytest in $venv"
exec "$venv/bin/python" -m pytest "$@" </dev/null
