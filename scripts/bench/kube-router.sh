#!/usr/bin/env bash
# Builds the real kube-router (github.com/cloudnativelabs/kube-router) from the Go module proxy, for
# bench/policy.ts, which runs its NetworkPolicy firewall only (iptables + ipset) on the bench's pods:
#   kube-router --run-firewall --run-router=false --run-service-proxy=false --kubeconfig ...
#
# Version: v2.1.0, the only version the proxy lists for github.com/cloudnativelabs/kube-router/v2 (later
# tags are "not available" there). Security advisories are reported against v2.1.0; the bench runs it
# only against its own test cluster on this machine, for as long as a measurement takes.
# Its go.mod has no replace directives, so `go install module/cmd/kube-router@version` builds it as
# released (CGO off: a static binary; kube-router execs the ipset and iptables-restore binaries).
#
# Output: ${PATU_KUBE_ROUTER_CACHE:-/var/cache/patu/kube-router}/<version>/bin/kube-router, with the Go
# module and build caches beside it (a re-run with the binary present returns at once).
# Usage: scripts/bench/kube-router.sh [--force]   prints the binary's path on its last line.
set -euo pipefail

VERSION=${PATU_KUBE_ROUTER_VERSION:-v2.1.0}
CACHE=${PATU_KUBE_ROUTER_CACHE:-/var/cache/patu/kube-router}
GO=${GO:-/usr/local/go/bin/go}
ROOT="$CACHE/$VERSION"
BIN="$ROOT/bin"
force=0
for a in "$@"; do
  case $a in
    --force) force=1 ;;
    *) echo "usage: scripts/bench/kube-router.sh [--force]" >&2; exit 2 ;;
  esac
done

mkdir -p "$ROOT"
# One build at a time (two benches starting together): the second waits, then finds the binary.
exec 9>"$ROOT/.lock"
flock 9
if [[ -x $BIN/kube-router && $force -eq 0 ]]; then
  echo "$BIN/kube-router"
  exit 0
fi
[[ -x $GO ]] || { echo "kube-router.sh: no Go toolchain at $GO (set GO=)" >&2; exit 1; }

export GOPATH="$CACHE/gopath" GOMODCACHE="$CACHE/gopath/pkg/mod" GOCACHE="$CACHE/gocache" GOBIN="$BIN"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0 GOPROXY=${GOPROXY:-https://proxy.golang.org}
mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"
t0=$(date +%s)
# -ldflags: what kube-router's Makefile stamps in (its --version output); the commit is not known here.
"$GO" install -trimpath \
  -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$VERSION -X github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate=module-proxy" \
  "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$VERSION" >&2
echo "kube-router.sh: built $VERSION in $(( $(date +%s) - t0 )) s" >&2
"$BIN/kube-router" --version >&2 || true
echo "$BIN/kube-router"
