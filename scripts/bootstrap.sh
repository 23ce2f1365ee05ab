#!/usr/bin/env bash
# Make this checkout ready to run: system packages (as root on Debian), then .venv with
# brokerscan and its test tools, exactly as uv.lock pins them (hashes checked; a lock that
# no longer matches pyproject.toml is an error, never a silent re-resolve). Idempotent and
# quiet when there is nothing to do (a no-op sync takes well under a second).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'bootstrap: %s\n' "$*"; }

# --- system packages: "package:check", where check is a command name or dpkg:<package>
python_has_venv() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }
python_has_headers() {
    python3 -c 'import os, sysconfig; p = sysconfig.get_paths()["include"]
raise SystemExit(not os.path.exists(os.path.join(p, "Python.h")))' >/dev/null 2>&1
}
has_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python_has_venv || missing+=(python3-venv)
python_has_headers || missing+=(python3-dev)
has_cmd gcc || missing+=(gcc)
has_cmd mosquitto || missing+=(mosquitto)
has_cmd rabbitmq-server || missing+=(rabbitmq-server)
has_cmd redis-server || missing+=(redis-server)
has_cmd pg_ctlcluster && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
has_cmd openssl || missing+=(openssl)
has_cmd systemd-analyze || missing+=(systemd)  # deploy/ units are verified by the tests
# promtool checks and unit-tests deploy/prometheus (rules, config): Debian's prometheus
has_cmd promtool || missing+=(prometheus)
# the exporters whose series the alert rules read (tests/integration/test_exporters.py)
has_cmd prometheus-redis-exporter || missing+=(prometheus-redis-exporter)
has_cmd prometheus-postgres-exporter || missing+=(prometheus-postgres-exporter)
# kubectl renders deploy/k8s (kubectl kustomize); Debian's kubernetes-client when absent
has_cmd kubectl || missing+=(kubernetes-client)
# The simulated Internet (bench/world.py) and the discovery stage: namespaces and routes
# (iproute2), verdicts per address (nftables), ZMap's SYNs, capsh for the no-CAP_NET_RAW test
has_cmd ip || missing+=(iproute2)
has_cmd nft || missing+=(nftables)
has_cmd zmap || missing+=(zmap)
has_cmd capsh || missing+=(libcap2-bin)
# Qpid Proton for the system Python: a real AMQP 1.0 server in the protocol-depth tests.
/usr/bin/python3 -c 'import proton' >/dev/null 2>&1 || missing+=(python3-qpid-proton)
# the dashboard's browser tests drive Debian's Chromium through Playwright (no browser
# download: `playwright install` is never run)
has_cmd chromium || missing+=(chromium)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        # promtool and the exporters' programs are wanted, not their services
        if command -v systemctl >/dev/null; then
            for unit in prometheus prometheus-redis-exporter prometheus-postgres-exporter; do
                if [[ " ${missing[*]} " == *" $unit "* ]]; then
                    systemctl disable --now "$unit" >/dev/null 2>&1 || true
                fi
            done
        fi
    else
        say "missing system packages: ${missing[*]}"
        say "install them as root (apt-get install ${missing[*]}); integration tests need them"
    fi
fi

# --- .venv, exactly as uv.lock says (the project, its dependencies and the test extra)
python3 -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' || {
    say "python3 is $(python3 -V 2>&1); brokerscan needs Python >= 3.11"
    exit 1
}
# shellcheck source=scripts/uv.sh
. scripts/uv.sh
ensure_uv
if ! out="$(uv_run lock --check --offline 2>&1)"; then
    cause="$(printf '%s\n' "$out" | sed -n 's/^ *cause: //p' | head -n 1)"
    say "uv.lock does not match pyproject.toml${cause:+ ($cause)}: run '$UV lock' and commit uv.lock"
    exit 1
fi
# --locked: never re-resolve; --exact (the default for sync): nothing beside what is locked.
# Bytecode is compiled here, once: where PYTHONDONTWRITEBYTECODE is set (containers, CI)
# every process would otherwise compile each module it imports from source, about 1.3 s of
# CPU for each brokerscan command (measured: `sweep status` 2.3 s -> 0.9 s).
if ! out="$(UV_COMPILE_BYTECODE=1 uv_run sync --locked --extra test 2>&1)"; then
    printf '%s\n' "$out" | tail -n 20 >&2
    say "installing uv.lock into .venv failed"
    exit 1
fi
# the project itself is installed editable: its own packages are compiled in place (a
# changed file's stale bytecode is ignored by Python, so this is never wrong, only faster)
.venv/bin/python -m compileall -q -j 0 brokerscan storage workers scheduler enrichment \
    tests bench >/dev/null
