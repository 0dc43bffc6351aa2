#!/usr/bin/env bash
# Runs patu's test suites with node's built-in test runner.
#   scripts/test.sh            unit + integration + e2e (integration/e2e need root; they skip, saying why, without it)
#   scripts/test.sh unit       pure logic only, no root
#   scripts/test.sh integration|e2e
# Test files run one at a time: the kernel suites share one machine's network stack.
set -euo pipefail
cd "$(dirname "$0")/.."
suites=("${@:-unit integration e2e}")
files=()
for suite in ${suites[@]}; do
  [[ -d dist/test/$suite ]] || continue
  while IFS= read -r f; do files+=("$f"); done < <(find "dist/test/$suite" -name '*.test.js' | sort)
done
if [[ ${#files[@]} -eq 0 ]]; then
  echo "test: no compiled tests found under dist/test (run: npm run build)" >&2
  exit 1
fi
# A CNI plugin must not inherit NODE_EXTRA_CA_CERTS (it adds ~50 ms to every start).
unset NODE_EXTRA_CA_CERTS
exec node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
