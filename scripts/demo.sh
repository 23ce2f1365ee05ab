#!/usr/bin/env bash
# The README's first command: make the checkout ready, then run brokerscan's demo
# (brokers of its own on loopback, scanned and reported). Arguments go to `brokerscan demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
exec .venv/bin/brokerscan demo "$@"
