# Sourced by the scripts that install Python packages (bootstrap, floors, latest): uv, pinned
# by version and hash (scripts/uv.txt), in .uv/ beside the checkout, from PyPI with pip.
# uv uses the machine's python3 and never downloads an interpreter of its own.
# shellcheck shell=bash

UV=.uv/bin/uv
export UV_PYTHON_DOWNLOADS=never UV_PYTHON=python3 UV_NO_PROGRESS=1

ensure_uv() {
    local want have
    want="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' scripts/uv.txt)"
    have="$("$UV" --version 2>/dev/null | cut -d' ' -f2 || true)"
    [ "$have" = "$want" ] && return 0
    printf 'uv: installing uv %s into .uv (log: .uv/pip.log)\n' "$want"
    rm -rf .uv
    python3 -m venv .uv
    # --isolated: the machine's pip.conf may add find-links and constraints; uv.txt holds hashes
    .uv/bin/python -m pip install --isolated --disable-pip-version-check --require-hashes \
        -r scripts/uv.txt >.uv/pip.log 2>&1 || {
        tail -n 20 .uv/pip.log >&2
        printf 'uv: installing uv %s failed (full log: .uv/pip.log)\n' "$want" >&2
        return 1
    }
}

uv_run() { "$UV" "$@"; }
