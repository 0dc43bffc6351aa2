#!/usr/bin/env bash
# Builds the Kubernetes node/control-plane binaries patu's e2e tests need, from the Go module proxy only.
#
# Version: v1.34.4, the newest 1.34 patch the proxy serves: same API surface as 1.34.0 but with all the
# 1.34 bug/CVE fixes; pinning one exact version keeps the cache key (and test behaviour) stable.
#
# `go install k8s.io/kubernetes/cmd/...@v` fails because k8s.io/kubernetes' go.mod replaces every
# k8s.io/* staging module with ./staging/src/..., and replace directives are ignored (and forbidden for
# go install) outside the main module. So we generate a tiny main module that requires k8s.io/kubernetes
# and replaces each staging module with its published v0.34.x twin, then `go build` the commands from it.
#
# Output: ${PATU_K8S_CACHE:-/var/cache/patu/k8s}/<version>/bin/{kube-apiserver,kubelet,kube-proxy,kubectl,
#   kube-controller-manager,kube-scheduler,etcd,etcdctl,crictl}
# Go module + build caches live in the same cache dir so a second run is instant and CI on the same
# machine reuses them. Usage: scripts/k8s/build.sh [--force] [--with-suite]
#
# --with-suite also builds the conformance suite (issue 16) into the same bin dir: e2e.test, ginkgo, agnhost,
# regression-issue-74839, coredns (see build_e2e below; scripts/k8s/images.sh turns them into images).
# Measured on the 2-core machine shared with other builds (load 5-12, so wall times are inflated), after the
# Kubernetes binaries (whose build cache the e2e packages mostly reuse):
#   e2e.test `go test -c` cold 468 s wall (3m13s user CPU), warm 26 s; agnhost 17 s, regression-issue-74839 1 s;
#   ginkgo cold 7 s, warm 4 s; CoreDNS cold 483 s wall (~3 min user CPU; its ~120 modules download in 28 s,
#   the rest is compiling), warm 27 s. All of it cached: a re-run with nothing changed takes 0.1 s.
set -euo pipefail

K8S_VERSION=${PATU_K8S_VERSION:-v1.34.4}
# etcd: Debian's etcd-server 3.4.23 was tried (scripts/k8s/cluster.sh with it in PATU_K8S_BIN_DIR): kube-apiserver
# 1.34 accepts it and pods/Deployments work, but it logs "RequestWatchProgress feature is not supported" and so
# turns off consistent reads from its watch cache: every consistent LIST goes to etcd, which is not how real
# 1.34 clusters behave (and would skew the informer/kube-proxy timings the benchmark measures). kubeadm 1.34
# pins etcd 3.6.x, so we build that from go.etcd.io the same way (~1 min) instead of installing etcd-server.
ETCD_VERSION=${PATU_ETCD_VERSION:-v3.6.4}
CACHE=${PATU_K8S_CACHE:-/var/cache/patu/k8s}
GO=${GO:-/usr/local/go/bin/go}
STAGING_VERSION=v0.${K8S_VERSION#v1.}

ROOT="$CACHE/$K8S_VERSION"
BIN="$ROOT/bin"
export GOPATH="$CACHE/gopath" GOMODCACHE="$CACHE/gopath/pkg/mod" GOCACHE="$CACHE/gocache"
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0 GOPROXY=${GOPROXY:-https://proxy.golang.org}
mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"

force=0 with_suite=0
for a in "$@"; do
  case $a in
    --force) force=1 ;;
    --with-suite) with_suite=1 ;;
    *) echo "usage: scripts/k8s/build.sh [--force] [--with-suite]" >&2; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
t_all=$(date +%s)
step() { # name, then command: runs it and prints how long it took
  local name=$1 t0; shift; t0=$(date +%s)
  echo "== $name"
  "$@"
  echo "== $name: $(( $(date +%s) - t0 ))s"
}
have_all() { for b in "$@"; do [[ -x $BIN/$b ]] || return 1; done; }

# k8s.io/kubernetes' own go.mod (fetched once): the staging list and the pinned tool versions come from it.
KMOD=""
kmod() {
  [[ -n $KMOD ]] || KMOD=$(curl -fsS -m 60 "$GOPROXY/k8s.io/kubernetes/@v/$K8S_VERSION.mod") \
    || { echo "build.sh: cannot fetch k8s.io/kubernetes@$K8S_VERSION go.mod from $GOPROXY" >&2; return 1; }
}
# k8s_gomod <module name>: a main module that requires k8s.io/kubernetes and replaces each staging module with
# its published twin. The staging list comes from kubernetes' own go.mod so a version bump cannot miss a module.
k8s_gomod() {
  echo "module $1"
  echo "go 1.24"
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo "replace ("
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' <<<"$KMOD" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
}
# Without these, every component reports v0.0.0-master: kubectl warns about skew and clients that gate
# on the server version (discovery, feature checks) see a bogus one; e2e.test logs its version too.
version_ldflags() {
  local commit; commit=$(curl -fsS -m 30 "$GOPROXY/k8s.io/kubernetes/@v/$K8S_VERSION.info" | sed -n 's/.*"Hash":"\([0-9a-f]*\)".*/\1/p')
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local x="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitTreeState=clean"
    x+=" -X $pkg.gitCommit=${commit:-unknown} -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$x"
}

build_k8s() {
  local mod="$ROOT/src-k8s"
  mkdir -p "$mod"
  kmod
  k8s_gomod patu.local/k8sbuild >"$mod/go.mod"
  local x; x=$(version_ldflags)
  ( cd "$mod"
    "$GO" get \
      k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION \
      k8s.io/kubernetes/cmd/kube-proxy@$K8S_VERSION k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION \
      k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION
    for c in kube-apiserver kubelet kube-proxy kubectl kube-controller-manager kube-scheduler; do
      (( force == 0 )) && [[ -x $BIN/$c ]] && continue
      step "go build $c" "$GO" build -trimpath -ldflags="-s -w$x" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c"
      mv "$BIN/$c.tmp" "$BIN/$c"
    done )
}

build_etcd() {
  local mod="$ROOT/src-etcd"
  mkdir -p "$mod"
  # etcd's server module also uses local replaces (../api, ../pkg, ...); same trick.
  cat >"$mod/go.mod" <<MOD
module patu.local/etcdbuild
go 1.24
require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
)
replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/server/v3 => go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 => go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
)
MOD
  ( cd "$mod"
    "$GO" get go.etcd.io/etcd/server/v3@$ETCD_VERSION go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION
    step "go build etcd" "$GO" build -trimpath -ldflags="-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd.tmp" "$BIN/etcd"
    step "go build etcdctl" "$GO" build -trimpath -ldflags="-s -w" -o "$BIN/etcdctl.tmp" go.etcd.io/etcd/etcdctl/v3
    mv "$BIN/etcdctl.tmp" "$BIN/etcdctl" )
}

# crictl, the CRI command line (the e2e tests ask containerd through CRI what kubelet sees). cri-tools
# v1.34.0 requires the k8s.io/cri-api and cri-client v0.34.0-rc.2 pre-releases, which the checksum database
# does not know (404): they are replaced by the released v0.34.x twins the Kubernetes build uses. cri-tools
# itself is also missing from sum.golang.org (404), so only its own checksum comes from the proxy's copy
# (GONOSUMDB for exactly that module); every dependency is still verified.
CRICTL_VERSION=${PATU_CRICTL_VERSION:-v1.34.0}
build_crictl() {
  local mod="$ROOT/src-crictl"
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<MOD
module patu.local/crictlbuild
go 1.24
require sigs.k8s.io/cri-tools $CRICTL_VERSION
replace (
	k8s.io/cri-api => k8s.io/cri-api $STAGING_VERSION
	k8s.io/cri-client => k8s.io/cri-client $STAGING_VERSION
)
MOD
  ( cd "$mod"
    export GONOSUMDB=sigs.k8s.io/cri-tools
    "$GO" get sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION
    step "go build crictl" "$GO" build -trimpath -ldflags="-s -w" -o "$BIN/crictl.tmp" sigs.k8s.io/cri-tools/cmd/crictl
    mv "$BIN/crictl.tmp" "$BIN/crictl" )
}

# The conformance suite (issue 16), from the same module as the binaries above:
#   e2e.test  `go test -c` of scripts/k8s/e2e/e2e_test.go: upstream's e2e_test.go importing only the network
#             specs (test/e2e/network, network/netpol, common/network) + upstream's suite setup (RunE2ETests).
#             Same flags as upstream's e2e.test (--provider=skeleton --kubeconfig --ginkgo.focus --report-dir).
#   agnhost   test/images/agnhost (VERSION 2.56 at v1.34.4), the binary of registry.k8s.io/e2e-test-images/agnhost:2.56
#   regression-issue-74839  test/images/regression-issue-74839, the binary of the conntrack spec's image
# Rebuilt when the wrapper source changes (a copy of it sits beside the binary).
build_e2e() {
  local mod="$ROOT/src-e2e"
  mkdir -p "$mod"
  kmod
  k8s_gomod patu.local/e2ebuild >"$mod/go.mod"
  cp "$HERE/e2e/e2e_test.go" "$mod/e2e_test.go"
  local x; x=$(version_ldflags)
  ( cd "$mod"
    # tidy records the wrapper's imports (a test file: `go get` would not); the image programs come after it,
    # since no package of this module imports them and tidy would drop them again.
    "$GO" mod tidy
    "$GO" get k8s.io/kubernetes/test/images/agnhost@$K8S_VERSION k8s.io/kubernetes/test/images/regression-issue-74839@$K8S_VERSION
    step "go test -c e2e.test" "$GO" test -c -trimpath -ldflags="-s -w$x" -o "$BIN/e2e.test.tmp" .
    mv "$BIN/e2e.test.tmp" "$BIN/e2e.test"
    cp e2e_test.go "$BIN/.e2e_test.go.built"
    step "go build agnhost" "$GO" build -trimpath -ldflags="-s -w" -o "$BIN/agnhost.tmp" k8s.io/kubernetes/test/images/agnhost
    mv "$BIN/agnhost.tmp" "$BIN/agnhost"
    step "go build regression-issue-74839" "$GO" build -trimpath -ldflags="-s -w" -o "$BIN/regression-issue-74839.tmp" \
      k8s.io/kubernetes/test/images/regression-issue-74839
    mv "$BIN/regression-issue-74839.tmp" "$BIN/regression-issue-74839" )
}
e2e_current() { have_all e2e.test agnhost regression-issue-74839 && cmp -s "$HERE/e2e/e2e_test.go" "$BIN/.e2e_test.go.built"; }

# go_install <module path of the command>@<version> <binary name> [ldflags]: modules without replace
# directives (ginkgo, CoreDNS) need no wrapper module. GOBIN is a scratch dir so a failed build leaves no
# half-written binary in $BIN.
go_install() {
  local what=$1 name=$2 ldflags=${3:-} gobin="$ROOT/gobin.tmp"
  rm -rf "$gobin"; mkdir -p "$gobin"
  ( cd "$ROOT" && GOBIN=$gobin "$GO" install -trimpath -ldflags="-s -w$ldflags" "$what" )
  mv "$gobin/$name" "$BIN/$name"; rmdir "$gobin"
}
# The ginkgo CLI, at the version the e2e tests are built with (k8s.io/kubernetes' go.mod), for `ginkgo -p`.
build_ginkgo() {
  kmod
  local v; v=$(awk '$1 == "github.com/onsi/ginkgo/v2" { print $2; exit }' <<<"$KMOD")
  [[ -n $v ]] || { echo "build.sh: no github.com/onsi/ginkgo/v2 in k8s.io/kubernetes@$K8S_VERSION go.mod" >&2; return 1; }
  step "go install ginkgo $v" go_install "github.com/onsi/ginkgo/v2/ginkgo@$v" ginkgo
}
# CoreDNS: the cluster DNS (registry.k8s.io/coredns/coredns, the version kubeadm 1.34 deploys). Its generated
# plugin list (core/plugin/zplugin.go) is committed upstream, so the default plugin set builds from the module.
COREDNS_VERSION=${PATU_COREDNS_VERSION:-v1.12.1}
build_coredns() {
  step "go install coredns $COREDNS_VERSION" go_install "github.com/coredns/coredns@$COREDNS_VERSION" coredns
}

if (( force )) || ! have_all etcd etcdctl; then step "etcd $ETCD_VERSION" build_etcd; fi
if (( force )) || ! have_all crictl; then step "crictl $CRICTL_VERSION" build_crictl; fi
if (( force )) || ! have_all kube-apiserver kubelet kube-proxy kubectl kube-controller-manager kube-scheduler; then step "kubernetes $K8S_VERSION" build_k8s; fi
if (( with_suite )); then
  if (( force )) || ! e2e_current; then step "e2e.test + agnhost $K8S_VERSION" build_e2e; fi
  if (( force )) || ! have_all ginkgo; then step "ginkgo" build_ginkgo; fi
  if (( force )) || ! have_all coredns; then step "coredns $COREDNS_VERSION" build_coredns; fi
fi
# $CACHE/bin always points at the pinned version's binaries: a stable default for tests that only need
# "a kube-apiserver" (test/integration/k8s-apiserver.test.ts) without knowing the version.
ln -sfn "$K8S_VERSION/bin" "$CACHE/bin"
echo "== total: $(( $(date +%s) - t_all ))s; binaries in $BIN"
ls -l "$BIN"
