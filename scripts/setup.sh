#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine (as root) to build, run and test patu:
# Debian packages, node modules, the build. Safe to re-run: it installs only what
# is missing and rebuilds only what changed.
#   --with-k8s   also build the Kubernetes binaries the cluster tests run (scripts/k8s/build.sh:
#                ~6 min once on 2 cores, cached in /var/cache/patu/k8s; needs Go and the Go
#                module proxy), and the conformance suite: e2e.test, ginkgo, agnhost, CoreDNS
#                (build.sh --with-suite) and the upstream-named test images (scripts/k8s/images.sh
#                build). Without them those tests skip and say so.
set -euo pipefail
cd "$(dirname "$0")/.."

# What each package is for:
#   clang-16 llvm-16 libbpf-dev   compile bpf/*.c (libbpf headers) ; libbpf1 is loaded at run time via koffi
#   bpftool                       only for people inspecting a node (bpftool prog list | grep patu_)
#   iproute2 nftables iptables    masquerade (nft) and test oracles (ip); iptables for the service benchmark
#   iperf3 sockperf               benchmarks and the demo
#   ipset                         bench/policy.ts runs the real kube-router's firewall (iptables + ipset; it execs ipset)
#   busybox-static                a tiny userland for test containers and pods
#   containernetworking-plugins   the reference bridge/host-local/portmap/bandwidth plugins (tests, bench)
#   podman runc                   a real CNI client for the end-to-end test
#   tcpdump                       test oracle: what an outside host sees (masquerade)
#   containerd openssl curl       the single-node Kubernetes cluster of the e2e tests (scripts/k8s/cluster.sh)
#   gcc libc6-dev                 the launcher (bin/patu) and the cluster's static pause binary
#   bind9-dnsutils netcat-openbsd libcap2-bin wget
#                                 dig/nslookup/host, OpenBSD nc, GNU wget and setcap for the e2e test images
#                                 (scripts/k8s/images.sh copies them in with their libraries)
PACKAGES=(clang-16 llvm-16 libbpf-dev libbpf1 bpftool iproute2 nftables iptables ipset iperf3 sockperf
  busybox-static containernetworking-plugins podman runc iputils-ping procps kmod tcpdump
  containerd openssl curl gcc libc6-dev bind9-dnsutils netcat-openbsd libcap2-bin wget)

with_k8s=0
for a in "$@"; do
  case $a in
    --with-k8s) with_k8s=1 ;;
    *) echo "usage: scripts/setup.sh [--with-k8s]" >&2; exit 2 ;;
  esac
done

if [[ $(id -u) -ne 0 ]]; then
  echo "setup: run as root (patu programs the kernel: netlink, eBPF, netns)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
bash scripts/build.sh

if ((with_k8s)); then
  # Not fatal: without the binaries the cluster tests skip (and say why); everything else still runs.
  if [[ -x ${GO:-/usr/local/go/bin/go} ]]; then
    if bash scripts/k8s/build.sh; then
      # The conformance suite and its images: after the binaries, so the Go caches are warm (the e2e
      # packages share most of their dependencies with kubelet/kube-apiserver).
      { bash scripts/k8s/build.sh --with-suite && bash scripts/k8s/images.sh build; } \
        || echo "setup: WARNING: the conformance suite or its images failed to build: the conformance tests will skip" >&2
    else
      echo "setup: WARNING: scripts/k8s/build.sh failed: the Kubernetes tests will skip" >&2
    fi
  else
    echo "setup: WARNING: no Go toolchain at ${GO:-/usr/local/go/bin/go}: the Kubernetes tests will skip" >&2
  fi
fi
