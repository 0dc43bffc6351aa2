#!/usr/bin/env bash
# A one- or two-node Kubernetes cluster inside this machine, for patu's tests. Loopback, private dirs and a network
# namespace of its own only:
#   the node's address ($NODE_IP, InternalIP) on a veth ($UPLINK) whose other end is in an "outside" netns the
#   script makes ($OUTSIDE_NS, at $OUTSIDE_IP): the node's uplink in this topology, never the machine's own;
#   etcd (127.0.0.1), kube-apiserver ($NODE_IP:$PATU_K8S_API_PORT, advertised there with the lease endpoint
#   reconciler, so default/kubernetes has endpoints), a PRIVATE containerd (own config, root, state, socket: never
#   the machine's default one), kubelet (on $NODE_IP; cgroupfs driver, cgroup v1 allowed, its cgroups under
#   /$CGROOT in every v1 hierarchy; clusterDNS $DNS_IP), patu as the only CNI (private conf and bin dirs),
#   optional kube-proxy.
#   The service CIDR stays on the node: an unreachable route for it (unless --kube-proxy, which owns that), and a
#   watcher (tcpdump) on $UPLINK records every packet to the service CIDR that leaves that way (`uplink-check`).
# Usage: scripts/k8s/cluster.sh up [--kube-proxy] [--no-cni] [--nodes 1|2] [--static-routes] | deploy | dns | uplink-check
#          | down | env | status
#   --nodes 2: a second node, $NODE2 (see "the second node" below): its own kubelet and containerd in a network
#   namespace of its own ($NS2, InternalIP $NODE2_IP on the same L2 as the first node's uplink) and a mount
#   namespace in which the first node's host paths ($STATE/{cni,patu,run,containerd,ipam,kubelet,pod-logs}, the pin
#   root, /var/lib/kubelet, /var/log/containers) are its own: the DaemonSet's hostPaths then mean node-local
#   directories on both nodes, as on two machines, and the same rendered manifest serves both.
#   --static-routes (with --nodes 2): each node gets a route to the other's pod CIDR via its InternalIP. patu's agent
#   programs these itself from the Node objects (node-routing, deploy/patu.yaml): this is for conflist-only
#   clusters (up without --no-cni) and to compare; the agent leaves routes it did not make alone.
#   --no-cni: no patu conflist is written: deploy/patu.yaml installs patu (its agent writes the conflist,
#   and the node turns Ready then). CNI_* requests reach the agent at $STATE/run/patu/agent.sock (the
#   DaemonSet's /run/patu must be mounted from there): containerd passes PATU_AGENT_SOCKET to bin/patu.
#   dns: CoreDNS as kube-dns ($DNS_IP, UDP+TCP 53; needs its image in the cluster's containerd and a service
#   proxy, i.e. patu deployed), waits until every kube-system pod is Ready.
# Env: PATU_K8S_CACHE (binaries, see build.sh), PATU_K8S_STATE (default /var/lib/patu-k8s), PATU_K8S_API_PORT (6443),
#   PATU_K8S_ETCD_PORT (23790, +1 for peers), PATU_K8S_KUBELET_PORT (10250), PATU_K8S_KUBELET_HEALTHZ_PORT (port-2),
#   PATU_K8S_NODE, PATU_K8S_POD_CIDR (inside 10.202.0.0/16), PATU_K8S_BRIDGE, PATU_K8S_CGROUP (cgroup dir name),
#   PATU_K8S_NODE_IP (10.203.0.1; a.b.c.d with d < 254, its /24 is the uplink's, the outside netns gets d+1),
#   PATU_K8S_UPLINK (host end of the veth, default <bridge>u), PATU_K8S_OUTSIDE_NS (default <cgroup>-outside),
#   PATU_K8S_COREDNS_IMAGE; the second node: PATU_K8S_NODE2 (node2), PATU_K8S_POD_CIDR2 (the pod /24 with the third
#   octet + 128), its InternalIP is the first node's + 2 (the outside netns holds + 1).
# The admin kubeconfig lives only in $STATE/admin.kubeconfig: it is for the tests, never shipped.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
K8S_VERSION=${PATU_K8S_VERSION:-v1.34.4}
CACHE=${PATU_K8S_CACHE:-/var/cache/patu/k8s}
BIN=${PATU_K8S_BIN_DIR:-$CACHE/$K8S_VERSION/bin}
STATE=${PATU_K8S_STATE:-/var/lib/patu-k8s}
API_PORT=${PATU_K8S_API_PORT:-6443}
ETCD_PORT=${PATU_K8S_ETCD_PORT:-23790}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
KUBELET_PORT=${PATU_K8S_KUBELET_PORT:-10250}
# The node keeps the name localhost (tests know it by that name); the apiserver reaches kubelet (logs, exec,
# port-forward) at its InternalIP, $NODE_IP.
NODE=${PATU_K8S_NODE:-localhost}
SERVICE_CIDR=10.96.0.0/16
# The kubernetes Service's ClusterIP (first of the range) and kube-dns's (the kubeadm convention).
DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
# 10.203/16: own range again (pods 10.202/16, agent default 10.200/16); tests take 10.203.<20..219>.1.
NODE_IP=${PATU_K8S_NODE_IP:-10.203.0.1}
[[ $NODE_IP =~ ^10\.203\.([0-9]+)\.([0-9]+)$ ]] && ((BASH_REMATCH[1] < 256 && BASH_REMATCH[2] > 0 && BASH_REMATCH[2] < 254)) \
  || { echo "cluster: PATU_K8S_NODE_IP=$NODE_IP: want 10.203.c.d with c < 256, 0 < d < 254" >&2; exit 2; }
OUTSIDE_IP=${NODE_IP%.*}.$((${NODE_IP##*.} + 1))
# Own ranges: 10.200/16 is the agent's default and 10.201.x/24 the CNI suite's, so runs never collide.
CLUSTER_CIDR=10.202.0.0/16
POD_CIDR=${PATU_K8S_POD_CIDR:-10.202.0.0/24}
# Names the host sees; a test running its own cluster next to another one overrides them (and the ports).
BRIDGE=${PATU_K8S_BRIDGE:-patuk8s0}
CGROOT=${PATU_K8S_CGROUP:-patu-k8s}
UPLINK=${PATU_K8S_UPLINK:-${BRIDGE:0:14}u}
OUTSIDE_NS=${PATU_K8S_OUTSIDE_NS:-$CGROOT-outside}
COREDNS_IMAGE=${PATU_K8S_COREDNS_IMAGE:-registry.k8s.io/coredns/coredns:v1.12.1}
KUBELET_HEALTHZ_PORT=${PATU_K8S_KUBELET_HEALTHZ_PORT:-$((KUBELET_PORT - 2))}
PAUSE_IMAGE=localhost/patu/pause:3.10
TEST_IMAGE=localhost/patu/busybox:test
CTRD_SOCK=$STATE/containerd/containerd.sock
PIN_ROOT=${PATU_K8S_PIN_ROOT:-/sys/fs/bpf/patu-test-$CGROOT}
METRICS_PORT=${PATU_K8S_METRICS_PORT:-9464}
# ---------- the second node (up --nodes 2) ----------
# Its dirs on the host; inside its mount namespace they are mounted over the first node's paths (NODE2_BINDS).
STATE2=$STATE/node2
NODE2=${PATU_K8S_NODE2:-node2}
NODE2_IP=${NODE_IP%.*}.$((${NODE_IP##*.} + 2))
IFS=. read -r _a _b _c _ <<<"$POD_CIDR"
POD_CIDR2=${PATU_K8S_POD_CIDR2:-$_a.$_b.$(((_c + 128) % 256)).0/24}
NS2=$CGROOT-node2
CGROOT2=$CGROOT-node2
PIN_ROOT2=$PIN_ROOT-node2
CTRD_SOCK2=$STATE2/containerd/containerd.sock
# A persistent mount namespace (unshare --mount=FILE) that node 2's containerd, kubelet and everything they start
# share: kubelet's volume mounts must be what containerd bind-mounts into containers.
MNTNS2=$STATE2/ns/mnt
NODE2_BINDS=(cni patu run containerd ipam kubelet pod-logs)
# Where containerd (netns_mounts_under_state_dir) keeps pod netns files: its CRI plugin's state dir.
NETNS_DIR=$STATE/containerd/state/io.containerd.grpc.v1.cri/netns
PATH=$BIN:$PATH

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }

# wait_for <what> <seconds> <command...>: every wait is bounded; on timeout, show the component's log tail.
wait_for() {
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    # A daemon that died will not become ready: fail now, with its log, instead of at the timeout.
    if [[ -f $STATE/pids/$what ]] && ! alive "$what"; then
      log "$what exited while waiting for it to become ready"
      tail -n 30 "$STATE/logs/$what.log" >&2
      return 1
    fi
    if ((SECONDS >= end)); then
      log "timed out after ${secs}s waiting for $what"
      [[ -f $STATE/logs/$what.log ]] && tail -n 30 "$STATE/logs/$what.log" >&2
      return 1
    fi
    sleep 0.5
  done
}

# start <name> <command...>: background daemon, pid in $STATE/pids/<name>, log in $STATE/logs/<name>.log.
# setsid: its own process group, so `down` can stop it (and only it) by pid.
start() {
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}
alive() { local p; p=$(cat "$STATE/pids/$1" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
ensure_alive() { alive "$1" || { tail -n 30 "$STATE/logs/$1.log" >&2; die "$1 exited during startup (log: $STATE/logs/$1.log)"; }; }

kubectl_() { kubectl --kubeconfig "$STATE/admin.kubeconfig" --cache-dir "$STATE/kube-cache" --request-timeout=20s "$@"; }

# ---------- certificates ----------
mkcert() { # name CN O [extra SAN line]
  local name=$1 cn=$2 o=$3 san=${4:-} d=$STATE/pki
  local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth"
  [[ -n $san ]] && ext+=$'\n'"subjectAltName=$san"
  openssl req -newkey rsa:2048 -nodes -keyout "$d/$name.key" -subj "/CN=$cn${o:+/O=$o}" -out "$d/$name.csr" 2>/dev/null
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
    -extfile <(echo "$ext") -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr"
}
kubeconfig() { # file user cert
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: patu-k8s, cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$STATE/pki/ca.crt"}}]
users: [{name: $2, user: {client-certificate: "$STATE/pki/$3.crt", client-key: "$STATE/pki/$3.key"}}]
contexts: [{name: patu-k8s, context: {cluster: patu-k8s, user: $2}}]
current-context: patu-k8s
EOF
}
make_pki() {
  local d=$STATE/pki
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout "$d/ca.key" -out "$d/ca.crt" -subj "/CN=patu-k8s-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  # 10.96.0.1: the kubernetes Service's ClusterIP, so in-cluster clients verify the same cert; $NODE_IP: where
  # it listens and what default/kubernetes points at.
  mkcert apiserver kube-apiserver "" "IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
  mkcert admin patu-k8s-admin system:masters
  mkcert kubelet "system:node:$NODE" system:nodes "DNS:$NODE,IP:$NODE_IP,IP:127.0.0.1"
  mkcert kube-proxy system:kube-proxy ""
  mkcert kube-controller-manager system:kube-controller-manager ""
  mkcert kube-scheduler system:kube-scheduler ""
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  kubeconfig "$STATE/admin.kubeconfig" admin admin
  kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$NODE" kubelet
  kubeconfig "$STATE/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
  kubeconfig "$STATE/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
  kubeconfig "$STATE/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
}

# ---------- images (no registry) ----------
# One-layer OCI archives (oci_archive); the images' Cmd, not Entrypoint: a pod's command/args replace it.
# shellcheck source=oci.sh
source "$HERE/oci.sh"
build_images() {
  local d=$STATE/images; mkdir -p "$d/pause/rootfs" "$d/busybox/rootfs/bin"
  # pause: holds the pod's namespaces; exits on SIGINT/SIGTERM, reaps orphans (it is the pod's pid 1).
  cat >"$d/pause/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = { .sa_handler = quit }, r = { .sa_handler = reap, .sa_flags = SA_NOCLDSTOP };
  sigaction(SIGINT, &q, NULL); sigaction(SIGTERM, &q, NULL); sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
C
  gcc -static -O2 -o "$d/pause/rootfs/pause" "$d/pause/pause.c" || die "gcc -static pause.c failed (libc6-dev provides libc.a)"
  oci_archive "$d/pause/rootfs" "$PAUSE_IMAGE" /bin '"Cmd":["/pause"],"WorkingDir":"/"' "$d/pause.tar"
  local bb; bb=$(command -v busybox || true); [[ -n $bb ]] || die "busybox not found (apt-get install busybox-static)"
  cp "$bb" "$d/busybox/rootfs/bin/busybox"
  local a; for a in $("$bb" --list); do [[ $a == busybox ]] || ln -sf busybox "$d/busybox/rootfs/bin/$a"; done
  mkdir -p "$d/busybox/rootfs/"{etc,tmp,proc,sys,dev,var/www}
  echo 'root:x:0:0:root:/:/bin/sh' >"$d/busybox/rootfs/etc/passwd"
  oci_archive "$d/busybox/rootfs" "$TEST_IMAGE" /bin '"Cmd":["/bin/sh"],"WorkingDir":"/"' "$d/busybox.tar"
}

# ---------- components ----------
# write_containerd_config [host dir]: the paths in it are the node's view ($STATE/containerd), the file goes to
# the host dir (node 2's is $STATE2/containerd, which its mount namespace shows at $STATE/containerd).
write_containerd_config() {
  local c=$STATE/containerd h=${1:-$STATE/containerd}; mkdir -p "$h/root" "$h/state" "$h/opt"
  cat >"$h/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  # Root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj (CRI gives sandboxes -998) would fail in runc.
  restrict_oom_score_adj = true
  # Pod netns files under our state dir, not /run/netns: down unmounts exactly ours.
  netns_mounts_under_state_dir = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        # runc's state for our containers stays in our state dir, not /run/containerd/runc.
        Root = "$c/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$STATE/cni/bin"
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1
EOF
}

# write_cni <no_cni> [host dir] [pod CIDR]: as write_containerd_config, paths in the files are the node's view.
write_cni() {
  local no_cni=$1 h=${2:-$STATE} pod_cidr=${3:-$POD_CIDR}
  mkdir -p "$h/cni/bin" "$h/cni/net.d" "$h/ipam" "$h/run/patu"
  # containerd's CRI sets up each pod's lo through the reference loopback plugin.
  ln -sf /usr/lib/cni/loopback "$h/cni/bin/loopback"
  ((no_cni)) && return 0
  [[ -x $REPO/bin/patu ]] || die "$REPO/bin/patu missing (run scripts/build.sh)"
  ln -sf "$REPO/bin/patu" "$h/cni/bin/patu"
  # masquerade off: nothing leaves this node, and the nft table is shared with other tests on the machine.
  # accel off: the pin root of production (/sys/fs/bpf/patu) is not this cluster's to touch.
  cat >"$h/cni/net.d/10-patu.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "patu-k8s",
  "plugins": [
    {"type": "patu", "bridge": "$BRIDGE", "hairpin": true, "masquerade": false, "accel": false,
     "clusterCIDR": "$CLUSTER_CIDR", "podCIDR": "$pod_cidr", "ipam": {"dataDir": "$STATE/ipam"}}
  ]
}
EOF
}

# write_kubelet_config [file node-ip cgroup-root pod-cidr]: node 1's by default.
write_kubelet_config() {
  local f=${1:-$STATE/kubelet-config.yaml} node_ip=${2:-$NODE_IP} cgroot=${3:-$CGROOT} pod_cidr=${4:-$POD_CIDR}
  mkdir -p "$STATE/kubelet"
  cat >"$f" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$STATE/pki/ca.crt"}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: "unix://$CTRD_SOCK"
# This host is hybrid (v1 controllers; cgroup2 only at /sys/fs/cgroup/unified): kubelet sees cgroup v1.
failCgroupV1: false
cgroupDriver: cgroupfs
# Everything kubelet makes lives under /$cgroot in each hierarchy, so down removes exactly that.
cgroupRoot: /$cgroot
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
# Raising its own priority needs CAP_SYS_RESOURCE, which root lacks here.
oomScoreAdj: 0
resolvConf: ""
# kube-dns (cluster.sh dns). Pods get it in resolv.conf whether or not it is deployed; nothing else here resolves.
clusterDNS: [$DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
registerNode: true
# Container logs in our state dir instead of /var/log/pods (kubelet still links them from /var/log/containers).
podLogsDir: "$STATE/pod-logs"
podCIDR: "$pod_cidr"
maxPods: 50
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
EOF
}

# ---------- the node's network: uplink to an outside netns, the service CIDR kept on the node ----------
# The veth is the node's uplink in this topology: $NODE_IP on the host end, $OUTSIDE_IP in $OUTSIDE_NS (whose
# default route leads back to the node, as a client network's would).
# Service CIDR routes, in the order the kernel picks them (lowest metric first):
#   unreachable $SERVICE_CIDR metric M: what was not translated at the socket (or by tc) is refused on the node
#     (EHOSTUNREACH / ICMP unreachable), never sent anywhere. Left out with --kube-proxy: its DNAT comes after
#     the first route lookup of locally sent packets, which must succeed (kube-proxy rejects in its own rules).
#   $SERVICE_CIDR via $OUTSIDE_IP metric M+10000: the path a leak would take on a real node (its default route
#     leads out of its uplink); so a leak in this topology goes out of $UPLINK, where the watcher sees it.
# M is the first free metric from 1000 in steps of 10: clusters side by side each own their pair of routes.
SVC_ROUTE_METRIC_FILE=$STATE/service-route-metric
setup_net() {
  local with_proxy=$1
  ip netns add "$OUTSIDE_NS" || die "ip netns add $OUTSIDE_NS failed (a cluster with these names already runs? '$0 down')"
  echo "$OUTSIDE_NS" >"$STATE/outside-netns"
  ip link add "$UPLINK" type veth peer name uplink netns "$OUTSIDE_NS" || die "ip link add $UPLINK failed"
  ip addr add "$NODE_IP/24" dev "$UPLINK" && ip link set "$UPLINK" up \
    && ip -n "$OUTSIDE_NS" link set lo up && ip -n "$OUTSIDE_NS" addr add "$OUTSIDE_IP/24" dev uplink \
    && ip -n "$OUTSIDE_NS" link set uplink up && ip -n "$OUTSIDE_NS" route add default via "$NODE_IP" \
    || die "cannot configure $UPLINK / $OUTSIDE_NS"
  local m
  for ((m = 1000; m < 2000; m += 10)); do
    ip route show exact "$SERVICE_CIDR" | grep -q "metric $m\b" && continue
    ip route add "$SERVICE_CIDR" via "$OUTSIDE_IP" dev "$UPLINK" metric $((m + 10000)) 2>/dev/null || continue
    echo "$m" >"$SVC_ROUTE_METRIC_FILE"
    if ((!with_proxy)); then
      ip route add unreachable "$SERVICE_CIDR" metric "$m" || die "ip route add unreachable $SERVICE_CIDR metric $m failed"
    fi
    break
  done
  [[ -f $SVC_ROUTE_METRIC_FILE ]] || die "no free route metric for $SERVICE_CIDR in 1000..1990"
  # -Q out: what the node sends (a client in $OUTSIDE_NS may well send to a ClusterIP; that is not a leak).
  # -U: each packet is in the file as soon as it is seen, so uplink-check is exact while the cluster runs.
  # -Z root: the file is in our root-owned state dir.
  start uplink-watch tcpdump -i "$UPLINK" -Q out -nn -U -Z root -w "$STATE/uplink.pcap" dst net "$SERVICE_CIDR"
  wait_for uplink-watch 10 grep -q '^tcpdump: listening on' "$STATE/logs/uplink-watch.log" || { ensure_alive uplink-watch; die "uplink watcher did not start"; }
}
teardown_net() {
  stop_pid uplink-watch
  local m
  if [[ -f $SVC_ROUTE_METRIC_FILE ]]; then
    m=$(cat "$SVC_ROUTE_METRIC_FILE")
    ip route del unreachable "$SERVICE_CIDR" metric "$m" 2>/dev/null || true
    ip route del "$SERVICE_CIDR" metric $((m + 10000)) 2>/dev/null || true
  fi
  ip link del "$UPLINK" 2>/dev/null || true
  [[ -f $STATE/outside-netns ]] && { ip netns del "$(cat "$STATE/outside-netns")" 2>/dev/null || true; }
  return 0
}
# uplink-check: every packet to the service CIDR the node sent out of its uplink since `up`; fails if any.
# With two nodes, each node's uplink (node 2's watcher writes uplink-node2.pcap).
uplink_check() {
  [[ -f $STATE/uplink.pcap ]] || die "no uplink capture in $STATE (is the cluster up?)"
  local w node pcap bad=0 pkts
  for w in uplink-watch $( (($(nodes_count) > 1)) && echo uplink-watch-node2); do
    node=$NODE pcap=$STATE/uplink.pcap
    [[ $w == uplink-watch-node2 ]] && node=$NODE2 pcap=$STATE/uplink-node2.pcap
    alive "$w" || die "the uplink watcher of node $node (tcpdump on $UPLINK) is not running: log $STATE/logs/$w.log"
    pkts=$(tcpdump -r "$pcap" -nn 2>/dev/null) || die "cannot read $pcap"
    if [[ -n $pkts ]]; then
      log "LEAK: $(wc -l <<<"$pkts") packet(s) to the service CIDR $SERVICE_CIDR left node $node through $UPLINK:"
      head -n 20 <<<"$pkts" >&2
      bad=1
    else
      log "uplink $UPLINK of node $node: no packet to $SERVICE_CIDR left the node"
    fi
  done
  return $bad
}

# ---------- the second node ----------
# Network: the outside netns becomes the LAN: a bridge `lan` there holds $OUTSIDE_IP, the first node's uplink peer
# and a veth to $NS2, where the other end is named $UPLINK too (each node's uplink has the same name, so one
# nodeport-devices setting fits both) and holds $NODE2_IP. The nodes share that L2 segment, as nodes in a rack do.
# $NS2 gets what the first node has: a default route out of its uplink, the service CIDR refused on the node (with
# the leak route behind it) and a watcher on its uplink.
setup_net2() {
  ip -n "$OUTSIDE_NS" link add lan type bridge && ip -n "$OUTSIDE_NS" addr del "$OUTSIDE_IP/24" dev uplink \
    && ip -n "$OUTSIDE_NS" link set uplink master lan && ip -n "$OUTSIDE_NS" addr add "$OUTSIDE_IP/24" dev lan \
    && ip -n "$OUTSIDE_NS" link set lan up && ip -n "$OUTSIDE_NS" route replace default via "$NODE_IP" \
    || die "cannot make the LAN bridge in $OUTSIDE_NS"
  ip netns add "$NS2" || die "ip netns add $NS2 failed (a cluster with these names already runs? '$0 down')"
  echo "$NS2" >"$STATE/node2-netns"
  ip -n "$OUTSIDE_NS" link add uplink2 type veth peer name "$UPLINK" netns "$NS2" \
    && ip -n "$OUTSIDE_NS" link set uplink2 master lan && ip -n "$OUTSIDE_NS" link set uplink2 up \
    && ip -n "$NS2" link set lo up && ip -n "$NS2" addr add "$NODE2_IP/24" dev "$UPLINK" && ip -n "$NS2" link set "$UPLINK" up \
    && ip -n "$NS2" route add default via "$OUTSIDE_IP" \
    && ip -n "$NS2" route add unreachable "$SERVICE_CIDR" metric 1000 \
    && ip -n "$NS2" route add "$SERVICE_CIDR" via "$OUTSIDE_IP" dev "$UPLINK" metric 11000 \
    && ip netns exec "$NS2" sysctl -qw net.ipv4.ip_forward=1 \
    || die "cannot configure node 2's netns $NS2"
  start uplink-watch-node2 ip netns exec "$NS2" tcpdump -i "$UPLINK" -Q out -nn -U -Z root -w "$STATE/uplink-node2.pcap" dst net "$SERVICE_CIDR"
  wait_for uplink-watch-node2 10 grep -q '^tcpdump: listening on' "$STATE/logs/uplink-watch-node2.log" \
    || { ensure_alive uplink-watch-node2; die "node 2's uplink watcher did not start"; }
}
# Routes between the nodes' pod CIDRs over the LAN (up --static-routes): what the agent would program.
static_routes() {
  ip route add "$POD_CIDR2" via "$NODE2_IP" dev "$UPLINK" || die "ip route add $POD_CIDR2 via $NODE2_IP failed"
  ip -n "$NS2" route add "$POD_CIDR" via "$NODE_IP" dev "$UPLINK" || die "ip route add $POD_CIDR via $NODE_IP in $NS2 failed"
  touch "$STATE/static-routes"
}
# Runs a command as node 2 does (its mount and network namespaces): "${IN_NODE2[@]}" cmd... (nsenter execs it).
IN_NODE2=(nsenter --mount="$MNTNS2" --net="/run/netns/$NS2")
# The mount namespace: a copy of the host's (slave: the host's unmounts, e.g. of /run/netns entries, reach it), with
# node 2's dirs mounted over the first node's paths: the state subdirs, the pin root, the cgroup the agent attaches
# to (cgroup-path in the rendered manifest names /$CGROOT; node 2's pods live in /$CGROOT2), and the two fixed host
# dirs kubelet writes (/var/lib/kubelet, /var/log/containers). The file that holds it lives on a private mount
# (unshare(1): a persistent namespace must not be bound where it would propagate into itself). Made before node 1
# mounts anything under the state dir (the host's mounts are private here: copies would outlive their originals).
setup_mntns2() {
  mkdir -p "$STATE2/ns" "$STATE2/var-lib-kubelet" "$STATE2/var-log-containers"
  mount --bind "$STATE2/ns" "$STATE2/ns" && mount --make-private "$STATE2/ns" && touch "$MNTNS2" \
    && unshare --mount="$MNTNS2" --propagation slave true || die "cannot make node 2's mount namespace at $MNTNS2"
  local d binds=()
  for d in "${NODE2_BINDS[@]}"; do mkdir -p "$STATE/$d" "$STATE2/$d"; binds+=("$STATE2/$d" "$STATE/$d"); done
  mkdir -p "$PIN_ROOT" "$PIN_ROOT2" || die "cannot make $PIN_ROOT and $PIN_ROOT2 (is bpffs mounted at /sys/fs/bpf?)"
  mkdir -p /sys/fs/cgroup/unified/"$CGROOT" /sys/fs/cgroup/unified/"$CGROOT2" || die "cannot make the nodes' cgroups in /sys/fs/cgroup/unified"
  binds+=("$PIN_ROOT2" "$PIN_ROOT" /sys/fs/cgroup/unified/"$CGROOT2" /sys/fs/cgroup/unified/"$CGROOT"
    "$STATE2/var-lib-kubelet" /var/lib/kubelet "$STATE2/var-log-containers" /var/log/containers)
  for d in /var/lib/kubelet /var/log/containers; do
    [[ -e $d ]] || { mkdir -p "$d" && echo "$d" >>"$STATE/host-dirs-created"; }
  done
  local i
  for ((i = 0; i < ${#binds[@]}; i += 2)); do
    nsenter --mount="$MNTNS2" mount --bind "${binds[i]}" "${binds[i + 1]}" || die "node 2: mount --bind ${binds[i]} ${binds[i + 1]} failed"
  done
  # As for node 1 (see up): pod netns files under containerd's state dir, a shared mount of its own.
  nsenter --mount="$MNTNS2" sh -c "mkdir -p '$NETNS_DIR' && mount --bind '$NETNS_DIR' '$NETNS_DIR' && mount --make-shared '$NETNS_DIR'" \
    || die "node 2: cannot make $NETNS_DIR a shared mount"
}
# up_node2 <no_cni>: containerd and kubelet of node 2, registered with its pod CIDR.
up_node2() {
  local no_cni=$1
  mkcert kubelet-node2 "system:node:$NODE2" system:nodes "DNS:$NODE2,IP:$NODE2_IP,IP:127.0.0.1"
  kubeconfig "$STATE/kubelet-node2.kubeconfig" "system:node:$NODE2" kubelet-node2
  write_cni "$no_cni" "$STATE2" "$POD_CIDR2"
  write_containerd_config "$STATE2/containerd"
  write_kubelet_config "$STATE2/kubelet-config.yaml" "$NODE2_IP" "$CGROOT2" "$POD_CIDR2"
  start containerd-node2 "${IN_NODE2[@]}" env PATU_AGENT_SOCKET="$STATE/run/patu/agent.sock" containerd --config "$STATE/containerd/config.toml"
  wait_for containerd-node2 30 ctr --address "$CTRD_SOCK2" version || { ensure_alive containerd-node2; die "node 2's containerd not answering"; }
  local img
  for img in pause busybox; do
    ctr --address "$CTRD_SOCK2" -n k8s.io images import "$STATE/images/$img.tar" >>"$STATE/logs/images.log" 2>&1 \
      || { cat "$STATE/logs/images.log" >&2; die "node 2: ctr images import $img.tar failed"; }
  done
  start kubelet-node2 "${IN_NODE2[@]}" kubelet --config "$STATE2/kubelet-config.yaml" --kubeconfig "$STATE/kubelet-node2.kubeconfig" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" --hostname-override "$NODE2" --node-ip "$NODE2_IP" --v 2
  wait_for kubelet-node2 120 kubectl_ get node "$NODE2" || { ensure_alive kubelet-node2; die "node $NODE2 not registered (log: $STATE/logs/kubelet-node2.log)"; }
  kubectl_ patch node "$NODE2" --type merge -p "{\"spec\":{\"podCIDR\":\"$POD_CIDR2\",\"podCIDRs\":[\"$POD_CIDR2\"]}}" >/dev/null \
    || die "cannot set spec.podCIDR of node $NODE2"
}
nodes_count() { cat "$STATE/nodes" 2>/dev/null || echo 1; }
node_names() { if (($(nodes_count) > 1)); then echo "$NODE $NODE2"; else echo "$NODE"; fi; }
# The containerd socket of every node (as the host reaches it).
containerd_socks() { if (($(nodes_count) > 1)); then echo "$CTRD_SOCK $CTRD_SOCK2"; else echo "$CTRD_SOCK"; fi; }
# down's part for node 2, while the apiserver still runs: its pods' CNI DEL, then its processes, mounts, netns.
down_node2() {
  [[ -f $STATE/pids/kubelet-node2 || -f $STATE/pids/containerd-node2 || -f $STATE/node2-netns || -e $MNTNS2 ]] || return 0
  if [[ -S $CTRD_SOCK2 ]] && alive containerd-node2; then
    local id end=$((SECONDS + 30))
    for id in $(ctr --address "$CTRD_SOCK2" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$CTRD_SOCK2" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    done
    while ((SECONDS < end)) && alive kubelet-node2 \
      && [[ -n $(find "$STATE2/ipam" "$STATE2/patu/ipam" -mindepth 2 -maxdepth 2 -regex '.*/[0-9.]+' 2>/dev/null) ]]; do sleep 1; done
  fi
  local ids
  ids=$(ls "$STATE2/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null || true)
  stop_pid kubelet-node2
  stop_pid containerd-node2
  # Its shims were started with the same -address text as node 1's ($CTRD_SOCK is its view of its socket).
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" || true); do kill -KILL "$p" 2>/dev/null || true; done
  for id in $ids; do
    rm -f "/run/containerd/s/$(printf '%s' "$CTRD_SOCK/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
    rm -f /var/lib/cni/results/*-"$id"-*
  done
  for p in /sys/fs/cgroup/*/"$CGROOT2"; do
    [[ -d $p ]] && find "$p" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  stop_pid uplink-watch-node2
  # Its mount namespace goes with its last process and the file that holds it (down unmounts that with the rest).
  [[ -f $STATE/node2-netns ]] && { ip netns del "$(cat "$STATE/node2-netns")" 2>/dev/null || true; }
  [[ $PIN_ROOT2 == /sys/fs/bpf/patu-test-* ]] && rm -rf "$PIN_ROOT2"
  return 0
}

apiserver_ready() { curl -fsS --max-time 2 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" "https://$NODE_IP:$API_PORT/readyz" | grep -qx ok; }
node_ready() { kubectl_ get node "${1:-$NODE}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }
all_nodes_ready() { local n; for n in $(node_names); do node_ready "$n" || return 1; done; }
etcd_ready() { etcdctl --endpoints "http://127.0.0.1:$ETCD_PORT" endpoint health; }

up() {
  local with_proxy=0 no_cni=0 nodes=1 static=0
  while (($#)); do
    case $1 in
      --kube-proxy) with_proxy=1 ;;
      --no-cni) no_cni=1 ;;
      --nodes) [[ ${2:-} =~ ^[12]$ ]] || die "up: --nodes takes 1 or 2"; nodes=$2; shift ;;
      --static-routes) static=1 ;;
      *) die "up: unknown option $1" ;;
    esac
    shift
  done
  ((nodes == 1 || !with_proxy)) || die "up: --kube-proxy runs on the first node only: not with --nodes 2"
  ((nodes == 2 || !static)) || die "up: --static-routes needs --nodes 2"
  ((nodes == 1)) || [[ ${NODE_IP##*.} -lt 253 ]] || die "up --nodes 2: node 2 takes PATU_K8S_NODE_IP + 2 ($NODE2_IP): want d < 253"
  [[ $(id -u) == 0 ]] || die "needs root (containerd, kubelet, netns, cgroups)"
  local b; for b in etcd etcdctl kube-apiserver kubelet kubectl; do [[ -x $BIN/$b ]] || die "$BIN/$b missing: run scripts/k8s/build.sh"; done
  ((with_proxy)) && { [[ -x $BIN/kube-proxy ]] || die "$BIN/kube-proxy missing: run scripts/k8s/build.sh"; }
  [[ -e $STATE/pids ]] && die "$STATE already holds a cluster: run '$0 down' first"
  mkdir -p "$STATE/pids" "$STATE/logs"
  echo "$nodes" >"$STATE/nodes"
  local t0=$SECONDS
  setup_net "$with_proxy"
  # Node 2's mount namespace first, before node 1 mounts anything under the state dir that it would copy.
  ((nodes == 1)) || { setup_net2; setup_mntns2; }
  make_pki
  build_images
  write_cni "$no_cni"
  write_containerd_config
  write_kubelet_config

  start etcd etcd --name patu-k8s --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "patu-k8s=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" --log-level warn
  wait_for etcd 30 etcd_ready || { ensure_alive etcd; die "etcd not healthy"; }

  start kube-apiserver kube-apiserver --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allow-privileged=true --authorization-mode Node,RBAC \
    --client-ca-file "$STATE/pki/ca.crt" --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --kubelet-client-certificate "$STATE/pki/admin.crt" --kubelet-client-key "$STATE/pki/admin.key" \
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local --api-audiences https://kubernetes.default.svc.cluster.local \
    --endpoint-reconciler-type lease --profiling=false \
    --kubelet-preferred-address-types InternalIP
  wait_for kube-apiserver 90 apiserver_ready || { ensure_alive kube-apiserver; die "kube-apiserver not ready"; }

  # Without kube-controller-manager nobody creates the default ServiceAccount or the kube-root-ca.crt ConfigMap
  # that every pod's projected token volume needs; make them for the namespaces tests use.
  local ns
  for ns in default kube-system; do
    kubectl_ -n "$ns" create serviceaccount default >/dev/null 2>&1 || true
    kubectl_ -n "$ns" create configmap kube-root-ca.crt --from-file=ca.crt="$STATE/pki/ca.crt" >/dev/null 2>&1 || true
  done
  [[ -x $BIN/kube-controller-manager ]] && {
    start kube-controller-manager kube-controller-manager --kubeconfig "$STATE/kube-controller-manager.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --use-service-account-credentials=true \
      --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
      --cluster-signing-cert-file "$STATE/pki/ca.crt" --cluster-signing-key-file "$STATE/pki/ca.key" \
      --allocate-node-cidrs=false --cluster-cidr "$CLUSTER_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" \
      --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller'
  }
  [[ -x $BIN/kube-scheduler ]] && {
    start kube-scheduler kube-scheduler --kubeconfig "$STATE/kube-scheduler.kubeconfig" \
      --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false
  }

  # Pod netns files are bind mounts containerd makes in this dir. deploy/patu.yaml mounts it into the agent with
  # HostToContainer propagation (netns made after the agent started must show up there), which needs a shared or
  # slave source; this host's mounts are private, so the dir becomes its own shared mount point, ours alone
  # (down unmounts everything under the state dir).
  mkdir -p "$NETNS_DIR"
  mount --bind "$NETNS_DIR" "$NETNS_DIR" && mount --make-shared "$NETNS_DIR" || die "cannot make $NETNS_DIR a shared mount"
  # libcni hands containerd's environment to plugins: bin/patu asks this cluster's agent, not the host's.
  start containerd env PATU_AGENT_SOCKET="$STATE/run/patu/agent.sock" containerd --config "$STATE/containerd/config.toml"
  wait_for containerd 30 ctr --address "$CTRD_SOCK" version || { ensure_alive containerd; die "containerd not answering"; }
  local img
  for img in pause busybox; do
    ctr --address "$CTRD_SOCK" -n k8s.io images import "$STATE/images/$img.tar" >>"$STATE/logs/images.log" 2>&1 \
      || { cat "$STATE/logs/images.log" >&2; die "ctr images import $img.tar failed"; }
  done

  # kubelet refuses a cgroupRoot that does not exist in every hierarchy. cpuset needs cpus/mems copied from
  # its parent before a task (or child) may join.
  local h cg
  for h in /sys/fs/cgroup/*/; do
    [[ -f ${h}cgroup.procs ]] || continue
    for cg in "$CGROOT" $( ((nodes == 1)) || echo "$CGROOT2"); do
      mkdir -p "$h$cg"
      if [[ -f ${h}cpuset.cpus ]]; then
        cat "${h}cpuset.cpus" >"$h$cg/cpuset.cpus"
        cat "${h}cpuset.mems" >"$h$cg/cpuset.mems"
      fi
    done
  done
  save_sysctls
  # kubelet also writes to fixed host paths whatever its flags say: /var/lib/kubelet/device-plugins/kubelet.sock
  # and /var/log/containers/*.log links. Note which of those dirs we bring into being, for down.
  local d
  for d in /var/lib/kubelet /var/log/containers; do [[ -e $d ]] || echo "$d" >>"$STATE/host-dirs-created"; done
  start kubelet kubelet --config "$STATE/kubelet-config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" --hostname-override "$NODE" --node-ip "$NODE_IP" --v 2
  # The pod subnet a node-ipam controller would hand out (it is off here): the agent reads spec.podCIDR.
  wait_for kubelet 120 kubectl_ get node "$NODE" || { ensure_alive kubelet; die "node $NODE not registered (log: $STATE/logs/kubelet.log)"; }
  kubectl_ patch node "$NODE" --type merge -p "{\"spec\":{\"podCIDR\":\"$POD_CIDR\",\"podCIDRs\":[\"$POD_CIDR\"]}}" >/dev/null \
    || die "cannot set spec.podCIDR of node $NODE"
  if ((nodes == 2)); then
    up_node2 "$no_cni"
    ((static)) && static_routes
  fi
  if ((no_cni)); then
    # NotReady (no network config yet) until patu's agent writes its conflist.
    wait_for kubelet 120 kubectl_ get node "$NODE" || { ensure_alive kubelet; die "node $NODE not registered (log: $STATE/logs/kubelet.log)"; }
  else
    wait_for kubelet 120 node_ready || { ensure_alive kubelet; die "node $NODE not Ready (log: $STATE/logs/kubelet.log)"; }
    if ((nodes == 2)); then
      wait_for kubelet-node2 120 node_ready "$NODE2" || { ensure_alive kubelet-node2; die "node $NODE2 not Ready (log: $STATE/logs/kubelet-node2.log)"; }
    fi
  fi

  if ((with_proxy)); then
    cat >"$STATE/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: "$STATE/kube-proxy.kubeconfig"}
clusterCIDR: "$CLUSTER_CIDR"
hostnameOverride: "$NODE"
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# 0 everywhere: leave the host's conntrack sysctls alone; no localhost NodePorts, so route_localnet stays 0.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
    start kube-proxy kube-proxy --config "$STATE/kube-proxy-config.yaml"
    touch "$STATE/kube-proxy-ran"
    wait_for kube-proxy 30 curl -fsS --max-time 2 http://127.0.0.1:10256/healthz || { ensure_alive kube-proxy; die "kube-proxy not healthy"; }
  fi
  log "up in $((SECONDS - t0))s; node$( ((nodes == 1)) || echo s) $(node_names) $( ((no_cni)) && echo 'registered (Ready once patu is deployed)' || echo Ready)"
  env_
}

# kubelet (protectKernelDefaults=false) rewrites kernel tunables at start: kernel.panic=10,
# kernel.panic_on_oops=1, vm.overcommit_memory=1, ...; kube-proxy may set route_localnet and conntrack timeouts.
# On a shared test machine those must come back. Saved machine-wide (not per cluster) and only while no kubelet
# runs, so a second cluster started next to a first one cannot save the already-changed values.
SYSCTL_SAVE=/run/patu-k8s-sysctl.saved
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
save_sysctls() {
  [[ -f $SYSCTL_SAVE ]] && return 0
  pgrep -x kubelet >/dev/null && return 0
  local k v
  for k in "${SYSCTLS[@]}"; do v=$(sysctl -n "$k" 2>/dev/null) && echo "$k=$v"; done >"$SYSCTL_SAVE.tmp"
  mv "$SYSCTL_SAVE.tmp" "$SYSCTL_SAVE"
}
restore_sysctls() {
  [[ -f $SYSCTL_SAVE ]] || return 0
  pgrep -x kubelet >/dev/null && return 0
  local kv
  while IFS= read -r kv; do sysctl -q -w "$kv" >/dev/null 2>&1 || log "sysctl -w $kv failed"; done <"$SYSCTL_SAVE"
  rm -f "$SYSCTL_SAVE"
}

# What the patu plugin adds for this cluster's bridge to the shared "ip patu" nftables table (src/dataplane/
# masquerade.ts): a jump from postrouting and a chain; the table goes when no other bridge's chain is left.
remove_masquerade() {
  local chain=masq_${BRIDGE//[^A-Za-z0-9_]/_} h
  nft list chain ip patu "$chain" >/dev/null 2>&1 || return 0
  # The jump may carry a comment before nft's "# handle N": match the jump, take the last field.
  for h in $(nft -a list chain ip patu postrouting 2>/dev/null | awk -v c="$chain" '$0 ~ ("jump " c "( |$)") { print $NF }'); do
    nft delete rule ip patu postrouting handle "$h" || true
  done
  nft delete chain ip patu "$chain" || log "nft: could not delete chain $chain"
  local left; left=$(nft list table ip patu 2>/dev/null || true)
  grep -q 'chain masq_' <<<"$left" || nft delete table ip patu 2>/dev/null || true
}

stop_pid() { # name: TERM its process group, then KILL after 10 s
  local f=$STATE/pids/$1 p; [[ -f $f ]] || return 0
  p=$(cat "$f")
  if kill -0 "$p" 2>/dev/null; then
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
    local end=$((SECONDS + 10))
    while kill -0 "$p" 2>/dev/null && ((SECONDS < end)); do sleep 0.2; done
    kill -KILL -- "-$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [[ -d $STATE ]] || { log "nothing to tear down in $STATE"; return 0; }
  # Controllers first, so no ReplicaSet/DaemonSet recreates the pods deleted next.
  local c
  for c in kube-controller-manager kube-scheduler; do stop_pid "$c"; done
  # Pods next, while kubelet and containerd still run, so patu's CNI DEL removes veths and IPAM records.
  if alive kubelet && alive kube-apiserver; then
    kubectl_ delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  fi
  if [[ -S $CTRD_SOCK ]] && alive containerd; then
    local id end=$((SECONDS + 30))
    for id in $(ctr --address "$CTRD_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$CTRD_SOCK" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    done
    # Stopping sandboxes through CRI is what runs CNI DEL; kubelet does it, containerd finishes it.
    while ((SECONDS < end)) && alive kubelet \
      && [[ -n $(find "$STATE/ipam" -mindepth 2 -maxdepth 2 -regex '.*/[0-9.]+' 2>/dev/null) ]]; do sleep 1; done
  fi
  # Every container/sandbox id of our containerd: their shim sockets (/run/containerd/s/<sha256(address/ns/id)>,
  # a fixed place in containerd 1.6) and libcni's result cache (/var/lib/cni/results) are keyed by them.
  # The task dirs survive a crashed containerd, unlike its API.
  down_node2
  local ids
  ids=$(ls "$STATE/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null || true)
  for c in kube-proxy kubelet; do stop_pid "$c"; done
  if [[ -f $STATE/kube-proxy-ran && -x $BIN/kube-proxy ]]; then
    kube-proxy --cleanup >/dev/null 2>&1 || log "kube-proxy --cleanup failed (iptables KUBE-* chains may remain)"
  fi
  # kubelet adds its own iptables chains (KUBE-FIREWALL jumped to from filter INPUT/OUTPUT, canaries, a hint)
  # and never removes them. They are shared by every kubelet on the machine, so remove them only when no
  # other kubelet still runs (one that does would recreate them within a minute anyway).
  if ! pgrep -x kubelet >/dev/null; then
    local ipt t
    for ipt in iptables ip6tables; do
      for c in INPUT OUTPUT; do while $ipt -t filter -D $c -j KUBE-FIREWALL 2>/dev/null; do :; done; done
      $ipt -t filter -F KUBE-FIREWALL 2>/dev/null && $ipt -t filter -X KUBE-FIREWALL 2>/dev/null || true
      for t in mangle nat filter; do $ipt -t $t -X KUBE-KUBELET-CANARY 2>/dev/null || true; done
      $ipt -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
    done
  fi
  restore_sysctls
  stop_pid containerd
  # containerd's shims outlive it by design; stop those whose socket/bundle lives in our state dir.
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" || true); do kill -KILL "$p" 2>/dev/null || true; done
  local id
  for id in $ids; do
    rm -f "/run/containerd/s/$(printf '%s' "$CTRD_SOCK/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
    # Present only if a pod's CNI DEL never ran; the pod's netns and IPAM dir go away with the state dir.
    rm -f /var/lib/cni/results/*-"$id"-*
  done
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  # containerd 1.6 makes /run/containerd/s for shim sockets even with a private state dir.
  pgrep -x containerd >/dev/null || rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  if ! pgrep -x kubelet >/dev/null && [[ -f $STATE/host-dirs-created ]]; then
    while IFS= read -r d; do
      case $d in
        /var/lib/kubelet) rm -f /var/lib/kubelet/device-plugins/kubelet.sock
          rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || log "$d not empty: left in place" ;;
        /var/log/containers) rmdir "$d" 2>/dev/null || log "$d not empty: left in place" ;;
      esac
    done <"$STATE/host-dirs-created"
  fi
  # Containers the killed shims left behind: every process still in our cgroups.
  local procs
  for procs in /sys/fs/cgroup/*/"$CGROOT"; do
    [[ -d $procs ]] && find "$procs" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  stop_pid kube-apiserver
  stop_pid etcd
  # Pod netns files and volume mounts under the state dir, deepest first.
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$STATE/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  teardown_net
  # A deployed patu's pins (unpinning its links detaches its programs) and its masquerade chain.
  [[ $PIN_ROOT == /sys/fs/bpf/patu-test-* ]] && rm -rf "$PIN_ROOT"
  remove_masquerade
  # Node 1's agent SNATs outside traffic it forwards to node 2's pods in `table ip patu_nodes` (src/dataplane/
  # node-snat.ts) on the host; node 2's table went with its netns. Ours only if it names node 2's pod CIDR.
  # Read whole before grep: under pipefail, grep -q leaving early makes nft's exit SIGPIPE (it missed 11 of 50 here).
  local snat; snat=$(nft list table ip patu_nodes 2>/dev/null || true)
  if grep -qF "$POD_CIDR2" <<<"$snat"; then nft delete table ip patu_nodes || log "nft: could not delete table patu_nodes"; fi
  # The cgroups kubelet made under /$CGROOT, in every v1 hierarchy and in cgroup2; deepest first, EBUSY retried.
  local h d try cg
  for h in /sys/fs/cgroup/*/; do
    for cg in "$CGROOT" "$CGROOT2"; do
      [[ -d $h$cg ]] || continue
      for d in $(find "$h$cg" -depth -type d); do
        for try in 1 2 3 4 5; do rmdir "$d" 2>/dev/null && break; sleep 0.2; done
      done
    done
  done
  rm -rf "$STATE"
  log "down: $STATE removed"
}

env_() {
  cat <<EOF
export KUBECONFIG=$STATE/admin.kubeconfig
export PATU_K8S_BIN_DIR=$BIN
export PATU_K8S_API_SERVER=https://$NODE_IP:$API_PORT
export PATU_K8S_NODE_IP=$NODE_IP
export PATU_K8S_OUTSIDE_IP=$OUTSIDE_IP
export PATU_K8S_OUTSIDE_NS=$OUTSIDE_NS
export PATU_K8S_UPLINK=$UPLINK
export PATU_K8S_DNS_IP=$DNS_IP
export PATU_K8S_CA=$STATE/pki/ca.crt
export PATU_K8S_NODE=$NODE
export PATU_K8S_POD_CIDR=$POD_CIDR
export PATU_K8S_CLUSTER_CIDR=$CLUSTER_CIDR
export PATU_K8S_SERVICE_CIDR=$SERVICE_CIDR
export PATU_K8S_IPAM_DIR=$STATE/ipam
export PATU_K8S_CNI_CONF_DIR=$STATE/cni/net.d
export PATU_K8S_CONTAINERD_SOCK=$CTRD_SOCK
export PATU_K8S_CNI_BIN_DIR=$STATE/cni/bin
export PATU_K8S_AGENT_SOCKET=$STATE/run/patu/agent.sock
export PATU_K8S_NETNS_DIR=$NETNS_DIR
export PATU_K8S_PIN_ROOT=$PIN_ROOT
export PATU_K8S_METRICS_PORT=$METRICS_PORT
export PATU_K8S_TEST_IMAGE=$TEST_IMAGE
export PATU_K8S_STATE=$STATE
export PATU_K8S_NODES=$(nodes_count)
EOF
  (($(nodes_count) > 1)) || return 0
  cat <<EOF
export PATU_K8S_NODE2=$NODE2
export PATU_K8S_NODE2_IP=$NODE2_IP
export PATU_K8S_POD_CIDR2=$POD_CIDR2
export PATU_K8S_NODE2_NETNS=$NS2
export PATU_K8S_NODE2_MNTNS=$MNTNS2
export PATU_K8S_CONTAINERD_SOCK2=$CTRD_SOCK2
export PATU_K8S_PIN_ROOT2=$PIN_ROOT2
export PATU_K8S_CGROUP2=$CGROOT2
export PATU_K8S_STATE2=$STATE2
EOF
}

# ---------- cluster DNS ----------
# CoreDNS as kube-dns, as kubeadm deploys it (names, labels, RBAC, probes), with a Corefile that serves only the
# cluster: cluster.local and the reverse zones. No `forward`: the node has no resolver to hand out (resolvConf is
# empty), and a forward to a loopback resolver makes the loop plugin crash-loop. Other names get SERVFAIL.
kube_dns_manifest() {
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations: [{key: CriticalAddonsOnly, operator: Exists}, {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
      containers:
        - name: coredns
          image: $COREDNS_IMAGE
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          resources: {limits: {memory: 170Mi}, requests: {cpu: 100m, memory: 70Mi}}
          volumeMounts: [{name: config-volume, mountPath: /etc/coredns, readOnly: true}]
          ports:
            - {containerPort: 53, name: dns, protocol: UDP}
            - {containerPort: 53, name: dns-tcp, protocol: TCP}
            - {containerPort: 9153, name: metrics, protocol: TCP}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
            readOnlyRootFilesystem: true
          livenessProbe:
            httpGet: {path: /health, port: 8080, scheme: HTTP}
            initialDelaySeconds: 60
            timeoutSeconds: 5
            failureThreshold: 5
          readinessProbe:
            httpGet: {path: /ready, port: 8181, scheme: HTTP}
            periodSeconds: 2
      volumes:
        - name: config-volume
          configMap: {name: coredns, items: [{key: Corefile, path: Corefile}]}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/cluster-service: "true", kubernetes.io/name: CoreDNS}
  annotations: {prometheus.io/port: "9153", prometheus.io/scrape: "true"}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: $DNS_IP
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
    - {name: metrics, port: 9153, protocol: TCP}
EOF
}
# dns: deploy kube-dns and wait until it and every other kube-system pod is Ready (e2e's setup checks that).
dns() {
  [[ -S $CTRD_SOCK ]] || die "no cluster in $STATE: run '$0 up' first"
  local s
  for s in $(containerd_socks); do
    ctr --address "$s" -n k8s.io images ls -q | grep -qxF "$COREDNS_IMAGE" \
      || die "image $COREDNS_IMAGE is not in the cluster's containerd $s (scripts/k8s/images.sh import --address $s)"
  done
  kube_dns_manifest | kubectl_ apply -f - >&2
  kubectl_ -n kube-system rollout status deploy/coredns --timeout=180s >&2 \
    || { kubectl_ -n kube-system logs deploy/coredns --tail=20 >&2 || true; die "kube-dns (CoreDNS) not ready"; }
  wait_for kubelet 120 kube_system_ready || { kubectl_ -n kube-system get pods -o wide >&2; die "not every kube-system pod is Ready"; }
  log "kube-dns ready at $DNS_IP; every kube-system pod Ready"
}
# Every kube-system pod Ready (succeeded ones aside) and the node schedulable: what e2e's suite setup waits for.
kube_system_ready() {
  local n
  for n in $(node_names); do [[ $(kubectl_ get node "$n" -o 'jsonpath={.spec.unschedulable}') != true ]] || return 1; done
  local pods
  pods=$(kubectl_ -n kube-system get pods -o 'jsonpath={range .items[*]}{.status.phase}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}') || return 1
  [[ -n $pods ]] && ! grep -v '^Succeeded ' <<<"$pods" | grep -qv ' True$'
}

# ---------- patu from deploy/*.yaml ----------
# render <patu|patu-uninstall>: the manifest as this cluster needs it. Only host paths and settings change, never
# the structure: the CNI dirs, patu's state and run dirs live in $STATE, pods' netns in $NETNS_DIR, pins in
# $PIN_ROOT (a pin root of its own, so the host's /sys/fs/bpf/patu is never touched), the agent's programs attach
# to this cluster's cgroup (never the cgroup2 root), it reaches the apiserver at $NODE_IP (no proxy yet) and
# serves /metrics on $METRICS_PORT. Paths that are written into files (conflist, install manifest) must be the
# same inside the pod and on the host, so those mounts keep hostPath == mountPath.
render() {
  local name=$1 f=$REPO/deploy/$1.yaml out
  [[ -f $f ]] || die "render: no $f"
  out=$(sed -e "s#/var/lib/patu#$STATE/patu#g; s#/opt/cni/bin#$STATE/cni/bin#g; s#/etc/cni/net.d#$STATE/cni/net.d#g" \
    -e "s#/run/patu#$STATE/run/patu#g; s#/run/netns#$NETNS_DIR#g; s#/sys/fs/bpf/patu\b#$PIN_ROOT#g; s#9464#$METRICS_PORT#g" \
    -e "s#^  cluster-cidr: .*#  cluster-cidr: \"$CLUSTER_CIDR\"#; s#^  bridge: .*#  bridge: \"$BRIDGE\"#" \
    -e "s#^  service-cidr: .*#  service-cidr: \"$SERVICE_CIDR\"#" \
    -e "s#^  cgroup-path: .*#  cgroup-path: \"/host/sys/fs/cgroup/unified/$CGROOT\"#; s#^  log-level: .*#  log-level: \"debug\"#" \
    -e "s%^  # k8s-service-host: .*%  k8s-service-host: \"$NODE_IP\"%; s%^  # k8s-service-port: .*%  k8s-service-port: \"$API_PORT\"%" \
    -e '/^[[:space:]]*#/d' "$f")
  # Two nodes: NodePorts on every node's uplink (same name on both), as a multi-node cluster is set up. A pod or
  # node connecting to the OTHER node's InternalIP:nodePort sends it over the LAN; that node's tc program
  # translates it. One node: off, as before (connections to the node's own address are translated at the socket).
  if (($(nodes_count) > 1)); then out=$(sed -e "s#^  nodeport-devices: .*#  nodeport-devices: \"$UPLINK\"#" <<<"$out"); fi
  # A manifest edit that no longer matches these lines must fail here, not deploy something half-rendered.
  if [[ $name == patu || $name == patu-split ]]; then
    local want
    for want in "cluster-cidr: \"$CLUSTER_CIDR\"" "service-cidr: \"$SERVICE_CIDR\"" "bridge: \"$BRIDGE\"" "k8s-service-port: \"$API_PORT\"" \
      "cgroup-path: \"/host/sys/fs/cgroup/unified/$CGROOT\"" "k8s-service-host: \"$NODE_IP\"" "--pin-root=$PIN_ROOT" "--data-dir=$STATE/patu/ipam" "path: $NETNS_DIR"; do
      grep -qF -- "$want" <<<"$out" || die "render: deploy/$name.yaml changed shape: no '$want' after rendering"
    done
  fi
  printf '%s\n' "$out"
}

# deploy: build the patu:dev image (scripts/image.sh), load it into this cluster's containerd, apply the podnet
# CRDs and the manifest (PATU_MANIFEST=patu-split: the split mode's, deploy/patu-split.yaml).
deploy() {
  [[ -S $CTRD_SOCK ]] || die "no cluster in $STATE: run '$0 up --no-cni' first"
  [[ -f $REPO/build/image/patu-dev.tar && ${PATU_IMAGE_REBUILD:-1} == 0 ]] || bash "$REPO/scripts/image.sh" >&2
  local s
  for s in $(containerd_socks); do
    ctr --address "$s" -n k8s.io images import "$REPO/build/image/patu-dev.tar" >>"$STATE/logs/images.log" 2>&1 \
      || { tail -5 "$STATE/logs/images.log" >&2; die "ctr images import patu-dev.tar into $s failed"; }
  done
  # The pod network configuration CRDs first (deploy/patu.yaml's header says the same), so the agent finds them.
  kubectl_ apply -f "$REPO/deploy/podnet-crds.yaml" >&2
  kubectl_ wait --for condition=established --timeout=60s crd/nodenetworks.network.patu.dev crd/podnetworkconfigs.network.patu.dev >&2
  render "${PATU_MANIFEST:-patu}" | kubectl_ apply -f - >&2
  log "patu applied; waiting for its DaemonSet and the node to be Ready"
  kubectl_ -n kube-system rollout status ds/patu --timeout=120s >&2 || die "patu DaemonSet not ready"
  wait_for kubelet 60 all_nodes_ready || die "node(s) $(node_names) not Ready after patu was deployed"
}

status() {
  local c
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy uplink-watch \
    containerd-node2 kubelet-node2 uplink-watch-node2; do
    [[ -f $STATE/pids/$c ]] || continue
    if alive "$c"; then echo "$c: running (pid $(cat "$STATE/pids/$c"))"; else echo "$c: DEAD (log: $STATE/logs/$c.log)"; fi
  done
  local n
  if alive kube-apiserver; then
    for n in $(node_names); do
      echo "node $n: Ready=$(kubectl_ get node "$n" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || echo unknown)"
    done
  fi
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  env) env_ ;;
  status) status ;;
  dns) dns ;;
  uplink-check) uplink_check ;;
  render) render "${2:-patu}" ;;
  deploy) deploy ;;
  *) echo "usage: $0 up [--kube-proxy] [--no-cni] [--nodes 1|2] [--static-routes] | deploy | dns | uplink-check | render [patu|patu-split|patu-uninstall] | down | env | status" >&2; exit 2 ;;
esac
