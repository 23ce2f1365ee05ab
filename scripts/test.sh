#!/usr/bin/env bash
# THE test command (README, CI): bootstrap (.venv exactly as uv.lock pins it), start the
# services, then ruff, mypy, pytest (unit and integration tiers) and the unit tier again with
# every dependency at its declared floor (scripts/floors.sh: .venv-floor from floors.txt).
# Extra arguments go to pytest and skip the floor run: scripts/test.sh -k servers
# pytest runs in BROKERSCAN_TEST_WORKERS processes (pytest-xdist; default: one per core, at
# least 2), a test module to a process: most integration tests wait on servers and timeouts,
# not on the CPU. tests/servers.py gives each process addresses of its own.
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
workers="${BROKERSCAN_TEST_WORKERS:-$(( $(nproc) > 2 ? $(nproc) : 2 ))}"
.venv/bin/pytest -n "$workers" --dist loadfile "$@" </dev/null || rc=$?
case "$rc" in
    0) ;;
    5) echo "test.sh: pytest collected no tests: that is a failure" >&2; failed+=(pytest) ;;
    *) failed+=(pytest) ;;
esac
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
