#!/usr/bin/env bash
# How long a fresh clone takes to get its Python environment ready (scripts/bootstrap.sh,
# the set-up both README commands start with), for two revisions in the same run, each with
# cold package caches (a new machine) and then warm ones (the same machine again).
#
#   bench/setup_time.sh [BASELINE_REV] [REV]     (default: 00d9b8b, pip; HEAD, uv)
#
# System packages are assumed installed (they are the same for both revisions). Each revision
# is cloned afresh into a temporary folder; caches live in that folder, so the machine's own
# pip and uv caches are neither used nor touched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
base="${1:-00d9b8b}"
rev="${2:-HEAD}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

measure() {  # name revision
    local dir="$work/$1" start
    git clone -q --no-checkout . "$dir"
    git -C "$dir" checkout -q "$2"
    export PIP_CACHE_DIR="$work/$1-pip-cache" UV_CACHE_DIR="$work/$1-uv-cache"
    for run in cold warm; do
        rm -rf "$dir/.venv" "$dir/.uv"
        start=$(date +%s.%N)
        (cd "$dir" && bash scripts/bootstrap.sh >"$work/$1-$run.log" 2>&1) || {
            tail -n 5 "$work/$1-$run.log" >&2; echo "setup_time: $1 $run failed" >&2; exit 1; }
        printf '%-9s %-5s %6.1f s  (%s packages)\n' "$1" "$run" \
            "$(echo "$(date +%s.%N) - $start" | bc)" \
            "$(find "$dir"/.venv/lib/python3*/site-packages -maxdepth 1 -name '*.dist-info' | wc -l)"
    done
}

measure baseline "$base"
measure candidate "$rev"
