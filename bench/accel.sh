#!/usr/bin/env bash
# Socket acceleration benchmark: bridge vs accelerated vs loopback, one run.
# Usage: sudo bench/accel.sh [--seconds N] [--json out.json]   (builds first)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
unset NODE_EXTRA_CA_CERTS
exec node dist/bench/accel.js "$@"
