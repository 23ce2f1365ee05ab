#!/usr/bin/env bash
# THE test command (README, CI): bootstrap (.venv exactly as uv.lock pins it), start the
# services, then ruff, mypy, pytest (unit and integration tiers) and the unit tier again with
# every dependency at its declared floor (scripts/floors.sh: .venv-floor from floors.txt).
# Extra arguments go to pytest and skip the floor run: scripts/test.sh -k servers
# pytest runs in BROKERSCAN_TEST_WORKERS processes (pytest-xdist; default: cores + 1: most
# integration tests wait on servers and timeouts, not the CPU), a test module to a process:
# tests/servers.py gives each process addresses of its own. Tests marked
# `serial` (they measure time) run afterwards, alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
bash scripts/services.sh start
export BROKERSCAN_SCOPE=127.0.0.0/8  # the transport may dial loopback only

failed=()
echo "== ruff"
.venv/bin/ruff check . || failed+=(ruff)
echo "== mypy"
.venv/bin/mypy || failed+=(mypy)
echo "== pytest"
rc=0
workers="${BROKERSCAN_TEST_WORKERS:-$(( $(nproc) + 1 ))}"
.venv/bin/pytest -n "$workers" --dist loadfile -m "not serial" "$@" </dev/null || rc=$?
echo "== pytest: the tests that measure time, alone (marked serial)"
alone=0
.venv/bin/pytest -m serial "$@" </dev/null || alone=$?
if [ "$rc" -eq 5 ] && [ "$alone" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2; failed+=(pytest)
elif { [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; } || { [ "$alone" -ne 0 ] && [ "$alone" -ne 5 ]; }; then
    failed+=(pytest)
fi
if [ "$#" -eq 0 ]; then
    echo "== pytest tests/unit at the dependency floors"
    bash scripts/floors.sh || failed+=(floors)
else
    echo "== floors: skipped (pytest arguments given; scripts/floors.sh runs them)"
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all passed"
