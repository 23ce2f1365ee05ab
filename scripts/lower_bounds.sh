#!/usr/bin/env bash
# The unit tests against the declared floors: .venv-floor holds every requirement of
# pyproject.toml (build system, dependencies, the test extra) pinned to its ">=" version
# (scripts/floor_pins.py), brokerscan installed there with --no-deps, and runs
# `pytest tests/unit` in it, so that every floor in pyproject.toml is a version brokerscan
# really works with. The venv is rebuilt only when pyproject.toml (or the pin script, or
# python3) changes; the install is editable, so code changes need no rebuild.
# Extra arguments go to pytest: `scripts/lower_bounds.sh tests/integration` adds the
# integration tier at the floors (about 6 minutes; worth it when a floor moves).
# Needs .venv (scripts/bootstrap.sh) for `packaging`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'lower_bounds: %s\n' "$*"; }

venv=.venv-floor
stamp=$venv/.brokerscan-floor
log=$venv/floor-pip.log
want="$(cat pyproject.toml scripts/floor_pins.py <(python3 -VV) <(pwd) | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
    || ! "$venv/bin/python" -c 'import brokerscan' >/dev/null 2>&1; then
    say "building $venv: every dependency at its floor (log: $log)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    .venv/bin/python scripts/floor_pins.py pyproject.toml >"$venv/pins.txt"
    {
        # The pins first, resolved together (transitive packages at whatever fits them),
        # then brokerscan itself, built by the floor setuptools, without dependencies.
        "$venv/bin/python" -m pip install --disable-pip-version-check -r "$venv/pins.txt" &&
        "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps \
            --no-build-isolation -e . &&
        "$venv/bin/python" -m pip check
    } >"$log" 2>&1 || {
        grep -v '^WARNING: Location' "$log" | tail -n 30 >&2
        say "installing the floors failed: raise the floor that does not install (full log: $log)"
        exit 1
    }
    printf '%s\n' "$want" >"$stamp"
fi
say "pytest tests/unit with every dependency at its floor ($venv/pins.txt)"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unit "$@" </dev/null
