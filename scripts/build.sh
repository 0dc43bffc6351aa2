#!/usr/bin/env bash
# Builds everything `bin/patu` needs from source:
#   1. eBPF objects: every bpf/*.c -> build/bpf/<name>.o (clang -target bpf), and the
#      test fixtures test/bpf/*.c -> build/test/bpf/<name>.o (kept out of build/bpf,
#      which `patu install` ships), and the benches' anchors bench/bpf/*.c -> build/bench/bpf/
#      (not shipped either)
#   2. TypeScript: the data-plane API's types from proto/ (buf generate -> src/rpc/gen/), then
#      src/, test/, bench/ -> dist/ (tsc, strict; fails on type errors)
#   3. the CNI fast path bundle: dist/cni.cjs (esbuild, one file, loads fast), and the
#      agent's: dist/agent/ (split at dynamic imports, less memory)
#   4. bin/patu: the small C launcher (src/launcher/patu.c) that hands CNI requests to
#      a running agent, or runs the Node plugin/CLI itself
# Objects are build outputs; nothing here is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG=${CLANG:-$(command -v clang-16 || command -v clang || true)}
if [[ -z "$CLANG" ]]; then
  echo "build: clang not found (apt-get install clang-16), needed to compile bpf/*.c" >&2
  exit 1
fi

shopt -s nullglob
# <source dir>:<output dir>. Headers are per program (bpf/accel.h beside bpf/accel.c)
# plus bpf/common.h: an object is rebuilt when its source or any header of either
# directory is newer.
for pair in bpf:build/bpf test/bpf:build/test/bpf bench/bpf:build/bench/bpf; do
  srcdir=${pair%%:*} outdir=${pair#*:}
  mkdir -p "$outdir"
  for src in "$srcdir"/*.c; do
    obj="$outdir/$(basename "${src%.c}").o"
    if [[ "$obj" -nt "$src" && -z "$(find bpf "$srcdir" -maxdepth 1 -name '*.h' -newer "$obj" -print -quit)" ]]; then
      continue
    fi
    "$CLANG" -target bpf -O2 -g -Wall -Werror \
      -I bpf -I/usr/include/x86_64-linux-gnu \
      -c "$src" -o "$obj"
  done
done
# An object whose source is gone (moved or deleted) must not be shipped.
for obj in build/bpf/*.o; do
  [[ -f "bpf/$(basename "${obj%.o}").c" ]] || rm -f "$obj"
done

# The data-plane API's TypeScript (src/rpc/gen/, a build output: .gitignore'd) from proto/,
# before tsc, which compiles it with the rest. Regenerated when missing or when a .proto or
# buf.gen.yaml is newer than it; buf.gen.yaml's `clean` empties the directory first.
gen=src/rpc/gen/patu/dataplane/v1/dataplane_pb.ts
if [[ ! -f $gen || buf.gen.yaml -nt $gen || -n "$(find proto -name '*.proto' -newer "$gen" -print -quit)" ]]; then
  npx --no-install buf generate
fi

npx --no-install tsc -p tsconfig.json

# The CNI plugin path is started once per pod event: one bundled file avoids
# resolving dozens of modules on every start (measured ~40 ms saved with zod). CommonJS,
# not ESM: Node then never sets up its ES module loader, a measured part of every start
# (VERSION, 20 interleaved runs: 378 against 460 ms p50 on a loaded machine). Minified:
# less source for V8 to scan. import.meta.url (src/home.ts) is the file's URL.
if [[ -f src/cni/main.ts ]]; then
  npx --no-install esbuild src/cni/main.ts --bundle --platform=node --format=cjs \
    --target=node20 --external:koffi --minify-whitespace --minify-syntax \
    --define:import.meta.url=__patu_url --outfile=dist/cni.cjs.tmp --log-level=warning \
    --banner:js="const __patu_url = require('node:url').pathToFileURL(__filename).href;"
  # Renamed into place: a runtime may start the plugin while we rebuild (or upgrade).
  mv -f dist/cni.cjs.tmp dist/cni.cjs
  rm -f dist/cni.mjs # the ESM bundle of older builds
fi

# The agent lives for months on small nodes: bundled, it holds less in memory than as ~200
# modules (fewer module records and sources; zod's locales and pino-free logging shaken out).
# Split at every dynamic import(), so what its flags do not ask for (the Kubernetes source,
# /metrics, the services file and its YAML parser, the CLI's other commands) stays on disk.
# bin/patu runs dist/agent/index.js for `patu agent` and `patu manager` (its code is a chunk
# behind a dynamic import, like the agent's); their CNI worker threads run
# dist/agent/cni-worker.js (the server names it relative to its own module). Paths to package.json and build/bpf are
# found by walking up (src/home.ts), so the bundle's depth does not matter. Names are kept (no
# identifier minification) so stack traces in the agent's logs stay readable. Built aside and
# swapped in whole: a running agent has loaded its chunks at start.
rm -rf dist/agent.tmp
npx --no-install esbuild src/cli/index.ts src/agent/cni-worker.ts --bundle --splitting --platform=node --format=esm \
  --target=node20 --external:koffi --minify-whitespace --minify-syntax \
  '--entry-names=[name]' --outdir=dist/agent.tmp --log-level=warning \
  --banner:js="import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"
rm -rf dist/agent.old
[[ -d dist/agent ]] && mv dist/agent dist/agent.old
mv dist/agent.tmp dist/agent
rm -rf dist/agent.old

CC=${CC:-$(command -v cc || command -v gcc || echo "$CLANG")}
NODE_BIN=$(command -v node)
mkdir -p bin
"$CC" -O2 -Wall -Wextra -Werror -DPATU_NODE="\"$NODE_BIN\"" -DPATU_HOME="\"$PWD\"" \
  -o bin/patu.tmp src/launcher/patu.c
mv -f bin/patu.tmp bin/patu
