#!/usr/bin/env bash
# The unit tests with every declared dependency at its floor, so that each ">=" in
# pyproject.toml is a version brokerscan really works with.
#
#   scripts/floors.sh [PYTEST ARGS]   install floors.txt into .venv-floor, run pytest tests/unit
#   scripts/floors.sh --lock          make floors.txt anew (uv pip compile --resolution
#                                     lowest-direct, with hashes), then check it
#
# floors.txt is committed, like uv.lock, so the floor run is the same on any day: the direct
# requirements at their floors, what lies beneath them as resolved when it was made. A
# floors.txt that no longer holds pyproject.toml's floors is a one-line error
# (scripts/floors.py check). Extra arguments go to pytest: `scripts/floors.sh tests/integration`
# adds the integration tier at the floors (worth it when a floor moves).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/uv.sh
. scripts/uv.sh
# Bytecode compiled at install, as pip does: an old release's invalid escape (netaddr 0.10)
# then warns once there, not at every import under the suite's filterwarnings = error.
# (.venv skips it: most of a warm set-up's time, and the locked releases import cleanly.)
export UV_COMPILE_BYTECODE=1
ensure_uv

say() { printf 'floors: %s\n' "$*"; }
venv=.venv-floor

if [ "${1:-}" = "--lock" ]; then
    requirements="$(mktemp)"
    trap 'rm -f "$requirements"' EXIT
    .venv/bin/python scripts/floors.py requirements >"$requirements"
    # the build system's requirement is in the input too, so its floor is tested as well
    uv_run pip compile "$requirements" --resolution lowest-direct --generate-hashes \
        --no-header --quiet --python-version 3.11 -o floors.txt
    sed -i '1i # scripts/floors.sh --lock: every requirement of pyproject.toml at its floor' floors.txt
    .venv/bin/python scripts/floors.py check floors.txt
    say "floors.txt made; commit it"
    exit 0
fi

.venv/bin/python scripts/floors.py check floors.txt
if ! out="$(
    { [ -x "$venv/bin/python" ] || uv_run venv --quiet "$venv"; } &&
    # --require-hashes is implied by the hashes in floors.txt; sync removes anything else
    uv_run pip sync --quiet --python "$venv/bin/python" floors.txt &&
    # brokerscan itself, built by the floor setuptools (in floors.txt), nothing else
    uv_run pip install --quiet --python "$venv/bin/python" --no-deps --no-build-isolation -e .
    2>&1)"; then
    printf '%s\n' "$out" | tail -n 20 >&2
    say "installing floors.txt into $venv failed"
    exit 1
fi
say "pytest tests/unit with every dependency at its floor (floors.txt)"
# in parallel as scripts/test.sh runs it (pytest-xdist is in floors.txt too)
workers="${BROKERSCAN_TEST_WORKERS:-$(( $(nproc) + 1 ))}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$workers" tests/unit "$@" </dev/null
