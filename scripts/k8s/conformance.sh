#!/usr/bin/env bash
# Kubernetes network conformance with patu as the CNI and the only service proxy, on the single-node cluster of
# scripts/k8s/cluster.sh, offline (binaries from scripts/k8s/build.sh --with-suite, images from images.sh).
#
# Usage: scripts/k8s/conformance.sh [--focus REGEX] [--skip REGEX] [--report DIR] [--procs N] [--nodes 2 [--static-routes]]
#   --nodes 2: the cluster has a second node (cluster.sh up --nodes 2: its own kubelet and containerd in a netns of
#   its own), for the specs that need two (e2e.test gets --num-nodes: SkipUnlessNodeCountIsAtLeast reads that flag, not
#   the cluster); --static-routes: cluster.sh's routes between the nodes' pod CIDRs instead of the agent's.
#   1. cluster.sh up --no-cni, the test images imported (into every node), patu from deploy/patu.yaml (cluster.sh deploy), kube-dns
#      (cluster.sh dns: CoreDNS, every kube-system pod Ready);
#   2. e2e.test --provider=skeleton with the focus (default '\[sig-network\].*\[Conformance\]'): what upstream
#      marks non-serial through `ginkgo -p` (N processes, default 2), then the [Serial] ones alone;
#   3. JUnit into DIR (default build/conformance/<UTC time>), with results.tsv (one line per spec run: result,
#      name, seconds, skip/failure message), the cluster's logs and uplink.txt;
#   4. the uplink check: a packet to the service CIDR that left the node through its uplink fails the run;
#   5. tears the cluster down (also on failure or ctrl-c), then prints a last line `N passed, N failed, N skipped`.
# Exits non-zero if any spec failed, the uplink check failed or the cluster could not be brought up.
#
# The cluster gets names and ports of its own (state /var/lib/patu-k8s-conformance, bridge patuconf0, node
# 10.203.1.1, API 16443, ...), so it runs beside a cluster brought up by hand; every PATU_K8S_* variable that
# cluster.sh reads overrides them (the CI test uses that to run it under its own pid-derived names).
# Needs root, like cluster.sh. One run at a time per machine with the default names.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
K8S_VERSION=${PATU_K8S_VERSION:-v1.34.4}
CACHE=${PATU_K8S_CACHE:-/var/cache/patu/k8s}
BIN=${PATU_K8S_BIN_DIR:-$CACHE/$K8S_VERSION/bin}
export PATU_K8S_VERSION=$K8S_VERSION PATU_K8S_CACHE=$CACHE PATU_K8S_BIN_DIR=$BIN
export PATU_K8S_STATE=${PATU_K8S_STATE:-/var/lib/patu-k8s-conformance}
export PATU_K8S_BRIDGE=${PATU_K8S_BRIDGE:-patuconf0}
export PATU_K8S_CGROUP=${PATU_K8S_CGROUP:-patu-k8s-conformance}
export PATU_K8S_POD_CIDR=${PATU_K8S_POD_CIDR:-10.202.1.0/24}
export PATU_K8S_NODE_IP=${PATU_K8S_NODE_IP:-10.203.1.1}
export PATU_K8S_API_PORT=${PATU_K8S_API_PORT:-16443}
export PATU_K8S_ETCD_PORT=${PATU_K8S_ETCD_PORT:-23810}
export PATU_K8S_KUBELET_PORT=${PATU_K8S_KUBELET_PORT:-10270}
export PATU_K8S_KUBELET_HEALTHZ_PORT=${PATU_K8S_KUBELET_HEALTHZ_PORT:-10268}
export PATU_K8S_METRICS_PORT=${PATU_K8S_METRICS_PORT:-9474}
STATE=$PATU_K8S_STATE
CLUSTER=(bash "$HERE/cluster.sh")

FOCUS='\[sig-network\].*\[Conformance\]'
SKIP=''
REPORT=''
PROCS=2
NODES=1
UP_FLAGS=()
usage() { echo "usage: $0 [--focus REGEX] [--skip REGEX] [--report DIR] [--procs N] [--nodes 1|2] [--static-routes]" >&2; exit 2; }
while (($#)); do
  case $1 in
    --focus) (($# >= 2)) || usage; FOCUS=$2; shift 2 ;;
    --skip) (($# >= 2)) || usage; SKIP=$2; shift 2 ;;
    --report) (($# >= 2)) || usage; REPORT=$2; shift 2 ;;
    --procs) (($# >= 2)) && [[ $2 =~ ^[1-9][0-9]*$ ]] || usage; PROCS=$2; shift 2 ;;
    --nodes) (($# >= 2)) && [[ $2 =~ ^[12]$ ]] || usage; UP_FLAGS+=(--nodes "$2"); NODES=$2; shift 2 ;;
    --static-routes) UP_FLAGS+=(--static-routes); shift ;;
    *) usage ;;
  esac
done
log() { echo "conformance: $*" >&2; }
die() { echo "conformance: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (cluster.sh: containerd, kubelet, netns, cgroups)"
for b in e2e.test ginkgo; do
  [[ -x $BIN/$b ]] || die "$BIN/$b missing: run scripts/k8s/build.sh --with-suite"
done
[[ -f $HERE/images.sh ]] || die "$HERE/images.sh missing (it assembles the test images)"
[[ -e $STATE ]] && die "$STATE exists: a conformance cluster runs already (or was left behind: PATU_K8S_STATE=$STATE $HERE/cluster.sh down)"
REPORT=${REPORT:-$REPO/build/conformance/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$REPORT"
REPORT=$(cd "$REPORT" && pwd)
# A report dir holds one run: stale JUnit files would be counted again.
rm -f "$REPORT"/junit_*.xml "$REPORT/results.tsv" "$REPORT/summary.txt" "$REPORT/uplink.txt"

torn_down=0
teardown() {
  ((torn_down)) && return 0
  torn_down=1
  if [[ -d $STATE/logs ]]; then
    mkdir -p "$REPORT/logs" && cp -r "$STATE/logs/." "$REPORT/logs/" 2>/dev/null || true
  fi
  "${CLUSTER[@]}" down >"$REPORT/down.log" 2>&1 || { log "cluster.sh down failed:"; tail -n 20 "$REPORT/down.log" >&2; return 1; }
}
on_signal() { log "interrupted: tearing the cluster down"; teardown || true; exit 130; }
trap on_signal INT TERM
trap 'teardown || true' EXIT

t0=$SECONDS
step() { log "$*"; }
step "cluster up ($STATE, node ${PATU_K8S_NODE_IP})"
"${CLUSTER[@]}" up --no-cni ${UP_FLAGS[@]+"${UP_FLAGS[@]}"} >"$REPORT/up.log" 2>&1 || { tail -n 30 "$REPORT/up.log" >&2; die "cluster.sh up failed (log: $REPORT/up.log)"; }
eval "$("${CLUSTER[@]}" env)"
step "importing the test images"
for sock in "$PATU_K8S_CONTAINERD_SOCK" ${PATU_K8S_CONTAINERD_SOCK2:+"$PATU_K8S_CONTAINERD_SOCK2"}; do
  bash "$HERE/images.sh" import --address "$sock" >>"$REPORT/images.log" 2>&1 \
    || { tail -n 30 "$REPORT/images.log" >&2; die "images.sh import into $sock failed (log: $REPORT/images.log)"; }
done
step "deploying patu (deploy/patu.yaml)"
"${CLUSTER[@]}" deploy >"$REPORT/deploy.log" 2>&1 || { tail -n 30 "$REPORT/deploy.log" >&2; die "cluster.sh deploy failed (log: $REPORT/deploy.log)"; }
step "deploying kube-dns"
"${CLUSTER[@]}" dns >"$REPORT/dns.log" 2>&1 || { tail -n 30 "$REPORT/dns.log" >&2; die "cluster.sh dns failed (log: $REPORT/dns.log)"; }
log "cluster ready in $((SECONDS - t0))s"

# One node: e2e.test's default (-1), as in every run before --nodes existed.
NUM_NODES_FLAG=()
((NODES == 1)) || NUM_NODES_FLAG=(--num-nodes="$NODES")
# run_pass <name> <label filter> <ginkgo flags...>: one e2e.test run; its JUnit ends up as junit_<name>.xml.
# ginkgo exits non-zero when a spec fails: the verdict comes from the JUnit files, so that is not fatal here.
# An e2e run that wrote no JUnit at all (it could not even start) is.
run_pass() {
  local name=$1 labels=$2; shift 2
  local dir=$REPORT/$name
  mkdir -p "$dir"
  local t=$SECONDS rc=0
  step "e2e pass '$name' (label filter '$labels'): focus '$FOCUS'${SKIP:+, skip '$SKIP'}"
  "$BIN/ginkgo" "$@" --timeout=3h --label-filter="$labels" --focus="$FOCUS" ${SKIP:+--skip="$SKIP"} \
    --no-color --silence-skips "$BIN/e2e.test" -- \
    --provider=skeleton --kubeconfig="$KUBECONFIG" --report-dir="$dir" --dump-logs-on-failure=false ${NUM_NODES_FLAG[@]+"${NUM_NODES_FLAG[@]}"} \
    >"$REPORT/e2e-$name.log" 2>&1 || rc=$?
  log "pass '$name': ginkgo exit $rc after $((SECONDS - t))s (log: $REPORT/e2e-$name.log)"
  local j
  j=$(find "$dir" -maxdepth 1 -name 'junit*.xml' | head -n 1)
  if [[ -z $j ]]; then
    tail -n 30 "$REPORT/e2e-$name.log" >&2
    die "pass '$name' wrote no JUnit report"
  fi
  mv "$j" "$REPORT/junit_$name.xml"
  rmdir "$dir" 2>/dev/null || true
}
run_pass parallel '!Serial' --procs="$PROCS"
run_pass serial 'Serial'

step "uplink check"
uplink_ok=1
"${CLUSTER[@]}" uplink-check >"$REPORT/uplink.txt" 2>&1 || uplink_ok=0
cat "$REPORT/uplink.txt" >&2
teardown || die "teardown failed"

# Count what ran. Specs the focus or label filter left out are in ginkgo's JUnit as skipped without a message
# ("skipped" only); they were never candidates, so they are not counted. A spec that skipped itself at run time
# (e2eskipper: "requires at least 2 nodes", ...) is counted as skipped, with its reason in results.tsv.
python3 - "$REPORT" <<'PY' >"$REPORT/summary.txt"
import sys, glob, xml.etree.ElementTree as ET
report = sys.argv[1]
rows, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
for f in sorted(glob.glob(f"{report}/junit_*.xml")):
    for tc in ET.parse(f).getroot().iter("testcase"):
        name = tc.get("name", "")
        name = name[5:] if name.startswith("[It] ") else name
        if name.startswith("[") and name.split("]")[0] in ("[SynchronizedBeforeSuite", "[SynchronizedAfterSuite",
                                                            "[BeforeSuite", "[AfterSuite", "[ReportBeforeSuite",
                                                            "[ReportAfterSuite", "[DeferCleanup (Suite)"):
            if tc.find("failure") is None and tc.find("error") is None:
                continue
        fail = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
        skip = tc.find("skipped")
        if fail is not None:
            res, msg = "failed", (fail.get("message") or fail.text or "")
        elif skip is not None:
            msg = skip.get("message") or skip.text or ""
            if msg.strip() in ("", "skipped"):
                continue
            res = "skipped"
        else:
            res, msg = "passed", ""
        counts[res] += 1
        msg = " ".join(msg.split())[:300]
        rows.append(f"{res}\t{name}\t{float(tc.get('time') or 0):.1f}\t{msg}")
with open(f"{report}/results.tsv", "w") as out:
    out.write("\n".join(sorted(rows)) + ("\n" if rows else ""))
print(f"{counts['passed']} {counts['failed']} {counts['skipped']}")
PY
read -r passed failed skipped <"$REPORT/summary.txt"
if ((!uplink_ok)); then
  log "FAILED: packets to the service CIDR left the node through its uplink (see $REPORT/uplink.txt)"
  failed=$((failed + 1))
fi
grep '^failed' "$REPORT/results.tsv" | cut -f2 | sed 's/^/conformance: FAILED: /' >&2 || true
log "report in $REPORT (results.tsv, junit_*.xml, logs/); $((SECONDS - t0))s in all"
echo "$passed passed, $failed failed, $skipped skipped" | tee "$REPORT/summary.txt"
((failed == 0 && passed + skipped > 0))
