#!/usr/bin/env bash
# Make this checkout ready to run: system packages (as root on Debian), then .venv with
# brokerscan and its test tools. Idempotent and quiet when there is nothing to do.
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
# kubectl renders deploy/k8s (kubectl kustomize); Debian's kubernetes-client when absent
has_cmd kubectl || missing+=(kubernetes-client)
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
    else
        say "missing system packages: ${missing[*]}"
        say "install them as root (apt-get install ${missing[*]}); integration tests need them"
    fi
fi

# --- .venv with the project and its test extras
python3 -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' || {
    say "python3 is $(python3 -V 2>&1); brokerscan needs Python >= 3.11"
    exit 1
}
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.brokerscan-bootstrap
want="$(cat pyproject.toml <(pwd) | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] \
    || ! .venv/bin/python -c 'import brokerscan' >/dev/null 2>&1; then
    say "installing brokerscan[test] into .venv (log: .venv/bootstrap-pip.log)"
    .venv/bin/python -m pip install --disable-pip-version-check -e '.[test]' \
        >.venv/bootstrap-pip.log 2>&1 || {
        tail -n 30 .venv/bootstrap-pip.log >&2
        say "pip install failed (full log: .venv/bootstrap-pip.log)"
        exit 1
    }
    printf '%s\n' "$want" >"$stamp"
fi
