#!/usr/bin/env bash
# The container images the [sig-network] e2e specs run, under their exact upstream names, assembled here
# without a registry or a Docker engine, then imported into a containerd with `ctr`.
#
#   scripts/k8s/images.sh build                                    assemble (cached) -> prints the tarballs
#   scripts/k8s/images.sh import --address SOCK [--namespace NS]   build if needed, then `ctr images import`
#   scripts/k8s/images.sh list                                     name <tab> tarball
#
# The names come from test/utils/image/manifest.go at v1.34.4 (what imageutils.GetE2EImage returns) and from
# what the network specs reference (test/e2e/network, common/network, framework): Agnhost, JessieDnsutils,
# BusyBox, Nginx (endpointslice.go), RegressionIssue74839 (conntrack.go), GetPauseImageName (service_latency.go,
# and the sandbox image), plus the cluster DNS kubeadm 1.34 deploys. Not built: DistrolessIptables (kube_proxy.go,
# a kube-proxy-only [Privileged] spec), Httpd/ResourceConsumer/VolumeNFSServer/AppArmorLoader (framework helpers
# no network spec calls).
#
# Contents (one uncompressed layer each, deterministic: sorted, mtime 0, root-owned):
#   agnhost:2.56       /agnhost (+ /agnhost-2) from test/images/agnhost, entrypoint /agnhost, cmd pause; /coredns;
#                      porter's /localhost.crt + /localhost.key (porter opens them relative to the workdir /);
#                      user-defined-in-image uid 1000 in group-defined-in-image gid 50000 (as upstream's Dockerfile);
#                      /uploads (netexec); busybox as sh and the small tools, and Debian's bash, curl, dig, nslookup,
#                      host, nc (netcat-openbsd, the flavour upstream's Alpine image installs), getent, ip, ss,
#                      GNU wget (one try per call, as busybox's: Debian 12's busybox 1.35 wget segfaults with -T,
#                      which the Service specs' up-checks pass: `wget -q -O - -T 1 http://<ClusterIP>:<port>`).
#   jessie-dnsutils:1.7  busybox + dig/nslookup/host/getent (the DNS probe pods run dig, getent, seq, test)
#   busybox:1.37.0-1   Debian's busybox-static with every applet (the content is Debian 12's 1.35, the name is the
#                      one the specs ask for)
#   nginx:1.14-4       Debian's nginx serving /usr/share/nginx/html on :80 as upstream's nginx image, logs to stdout/err
#   regression-issue-74839:1.2  the test/images binary + busybox
#   pause:3.10.1       upstream's build/pause/linux/pause.c, static, user 65535 as upstream
#   coredns/coredns:v1.12.1  /coredns with cap_net_bind_service file capability, user 65532 (nonroot) as upstream
# Binaries come from scripts/k8s/build.sh --with-suite ($CACHE/<version>/bin); Debian tools from this machine's
# packages (bind9-dnsutils netcat-openbsd curl wget iproute2 bash busybox-static libc-bin: scripts/setup.sh installs
# them) with the shared libraries ldd names, and nginx from its .deb (`apt-get download`, not installed: its
# postinst would start a server on the host's port 80).
#
# Cache: $CACHE/<version>/images/*.tar. A key over this script and the stat of every input (binaries, dpkg
# status, the nginx .deb) skips the whole build when nothing changed; otherwise each image is reassembled and
# its tarball replaced only if its layer digest changed. `import` skips images the containerd already has
# with the same manifest digest.
#
# Measured here (2 cores, shared, load ~5): build 20-32 s cold (nginx .deb download included), 0.2 s cached;
# import of all seven into a fresh containerd 1.6: 10-18 s, 0.1 s when it has them.
# Sizes (uncompressed layer tarballs): agnhost 190 MiB (agnhost 54 MB + coredns 75 MB + dig's libraries, 31 MB of them libicudata via libxml2), jessie-dnsutils 56 MiB,
# nginx 12 MiB, regression-issue-74839 4.5 MiB, busybox 2.3 MiB, coredns 72 MiB, pause 0.7 MiB.
set -euo pipefail

K8S_VERSION=${PATU_K8S_VERSION:-v1.34.4}
CACHE=${PATU_K8S_CACHE:-/var/cache/patu/k8s}
BIN="$CACHE/$K8S_VERSION/bin"
OUT="$CACHE/$K8S_VERSION/images"
KSRC="$CACHE/gopath/pkg/mod/k8s.io/kubernetes@$K8S_VERSION"
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "images.sh: $*" >&2; exit 1; }
step() { local name=$1 t0; shift; t0=$(date +%s%N); "$@"; echo "== $name: $(( ($(date +%s%N) - t0) / 1000000 ))ms"; }

# name|tarball file name. The order is the import order.
IMAGES=(
  "registry.k8s.io/pause:3.10.1|pause.tar"
  "registry.k8s.io/e2e-test-images/agnhost:2.56|agnhost.tar"
  "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7|jessie-dnsutils.tar"
  "registry.k8s.io/e2e-test-images/busybox:1.37.0-1|busybox.tar"
  "registry.k8s.io/e2e-test-images/nginx:1.14-4|nginx.tar"
  "registry.k8s.io/e2e-test-images/regression-issue-74839:1.2|regression-issue-74839.tar"
  "registry.k8s.io/coredns/coredns:v1.12.1|coredns.tar"
)
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# ---------- rootfs helpers ----------
# add_bin <root> <host path> [<path in image>]: the program (symlinks resolved) and every shared library ldd names,
# at the same paths, so the image's loader finds them as on the host (plus an ld.so.cache, see finish_root).
add_bin() {
  local root=$1 src=$2 dst=${3:-$2} lib
  [[ -e $src ]] || die "$src not found (scripts/setup.sh --with-k8s installs the packages the images take from)"
  mkdir -p "$root$(dirname "$dst")"
  cp -L "$src" "$root$dst"
  while read -r lib; do
    [[ -e $root$lib ]] || cp -L --parents "$lib" "$root"
  done < <(ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
}
# add_busybox <root> [applets to leave out]: /bin/busybox and a link per applet, except those a real tool
# replaces (busybox's nc and nslookup are not what the specs expect).
add_busybox() {
  local root=$1; shift
  local skip=" $* " a bb; bb=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
  mkdir -p "$root/bin"
  cp "$bb" "$root/bin/busybox"
  for a in $("$bb" --list); do
    [[ $a == busybox || $skip == *" $a "* || -e $root/bin/$a ]] && continue
    ln -s busybox "$root/bin/$a"
  done
}
# add_dash <root>: Debian's dash as /bin/sh where real tools sit beside busybox. Debian's busybox ash is built
# "standalone": it runs its own applet for any name it has (nc, nslookup, ip, wget, ...) before searching PATH,
# so `sh -c "nc ..."` would get busybox's nc, not OpenBSD's. dash searches PATH.
add_dash() {
  local root=$1
  add_bin "$root" /bin/dash /bin/dash
  ln -sf dash "$root/bin/sh"
}
# base_root <root>: the directories, users and name-service files every image has.
base_root() {
  local root=$1
  mkdir -p "$root"/{etc,tmp,proc,sys,dev,root,var/run,usr/bin,usr/sbin}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  # kubelet mounts its own /etc/hosts over this one in pods; a runtime without it (ctr run) gets localhost.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  printf 'hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\nservices: files\nprotocols: files\n' >"$root/etc/nsswitch.conf"
  [[ -f /etc/services ]] && cp /etc/services "$root/etc/services"
  [[ -f /etc/protocols ]] && cp /etc/protocols "$root/etc/protocols"
  return 0
}
# finish_root <root>: an ld.so.cache when the image has dynamic programs.
finish_root() {
  local root=$1
  if compgen -G "$root/lib64/ld-linux*" >/dev/null; then
    cp /etc/ld.so.conf "$root/etc/" && cp -r /etc/ld.so.conf.d "$root/etc/"
    ldconfig -r "$root"
    rm -rf "$root/var/cache/ldconfig" # inode/ctime records: would make each build's layer differ
  fi
}
add_dns_tools() { # dig, nslookup, host (bind9-dnsutils) and glibc's getent
  local root=$1 t
  for t in /usr/bin/dig /usr/bin/nslookup /usr/bin/host /usr/bin/getent; do add_bin "$root" "$t"; done
}

# ---------- the images ----------
# Each make_<name> <root> fills the root and prints the image config fields as JSON members.
make_pause() {
  local root=$1
  [[ -f $KSRC/build/pause/linux/pause.c ]] || die "$KSRC/build/pause/linux/pause.c missing (scripts/k8s/build.sh downloads the module)"
  gcc -Os -Wall -Werror -static -DVERSION=v3.10.1 -o "$root/pause" "$KSRC/build/pause/linux/pause.c" \
    || die "gcc -static pause.c failed (libc6-dev provides libc.a)"
  strip "$root/pause"
  echo '"Entrypoint":["/pause"],"User":"65535:65535"'
}
make_agnhost() {
  local root=$1
  base_root "$root"
  add_dash "$root"
  add_busybox "$root" nc nslookup netcat ip ss wget
  cp "$BIN/agnhost" "$root/agnhost"
  ln -s agnhost "$root/agnhost-2"
  cp "$BIN/coredns" "$root/coredns"
  cp "$KSRC/test/images/agnhost/porter/localhost.crt" "$KSRC/test/images/agnhost/porter/localhost.key" "$root/"
  chmod 0644 "$root/localhost.crt" "$root/localhost.key"
  mkdir -p "$root/uploads" "$root/home/user-defined-in-image"
  add_dns_tools "$root"
  add_bin "$root" /usr/bin/curl
  add_bin "$root" /usr/bin/wget
  printf 'tries = 1\n' >"$root/etc/wgetrc"
  add_bin "$root" /bin/nc.openbsd /usr/bin/nc
  add_bin "$root" /bin/bash /bin/bash
  add_bin "$root" /bin/ip /sbin/ip
  add_bin "$root" /bin/ss /usr/bin/ss
  echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$root/etc/passwd"
  printf 'user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n' >>"$root/etc/group"
  finish_root "$root"
  echo '"Entrypoint":["/agnhost"],"Cmd":["pause"],"WorkingDir":"/","ExposedPorts":{"80/tcp":{},"8080/tcp":{},"8081/tcp":{},"9376/tcp":{},"5000/tcp":{}}'
}
make_jessie_dnsutils() {
  local root=$1
  base_root "$root"
  add_dash "$root"
  add_busybox "$root" nslookup
  add_dns_tools "$root"
  finish_root "$root"
  echo '"Cmd":["/bin/sh"]'
}
make_busybox() {
  local root=$1
  base_root "$root"
  add_busybox "$root"
  echo '"Cmd":["sh"]'
}
NGINX_DEB_DIR="$CACHE/debs"
nginx_deb() { # the cached .deb of Debian's nginx (the package, not installed)
  local debs=("$NGINX_DEB_DIR"/nginx_*_amd64.deb)
  if [[ ! -f ${debs[-1]} ]]; then
    mkdir -p "$NGINX_DEB_DIR"
    # apt's _apt user cannot write into a root-only dir; download in a scratch dir it can, then move.
    local tmp; tmp=$(mktemp -d); chmod 755 "$tmp"
    # A machine whose packages were all there already may have no package lists yet: update once, then retry.
    ( cd "$tmp" && { apt-get download nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get download nginx >/dev/null; }; } ) \
      || { rm -rf "$tmp"; die "apt-get download nginx failed"; }
    mv "$tmp"/nginx_*_amd64.deb "$NGINX_DEB_DIR/"; rm -rf "$tmp"
    debs=("$NGINX_DEB_DIR"/nginx_*_amd64.deb)
  fi
  echo "${debs[-1]}"
}
make_nginx() {
  local root=$1 x; x=$(mktemp -d)
  base_root "$root"
  add_busybox "$root"
  dpkg-deb -x "$(nginx_deb)" "$x"
  add_bin "$root" "$x/usr/sbin/nginx" /usr/sbin/nginx
  rm -rf "$x"
  # As the upstream nginx image: user nginx (101), html in /usr/share/nginx/html, logs to the container's output.
  echo 'nginx:x:101:101:nginx:/var/cache/nginx:/sbin/nologin' >>"$root/etc/passwd"
  echo 'nginx:x:101:nginx' >>"$root/etc/group"
  mkdir -p "$root"/{etc/nginx,usr/share/nginx/html,var/log/nginx,var/cache/nginx,run}
  mkdir -p "$root"/var/lib/nginx/{body,fastcgi,proxy,scgi,uwsgi}
  ln -s /dev/stdout "$root/var/log/nginx/access.log"
  ln -s /dev/stderr "$root/var/log/nginx/error.log"
  cat >"$root/etc/nginx/nginx.conf" <<'CONF'
user nginx;
worker_processes auto;
error_log /var/log/nginx/error.log notice;
pid /run/nginx.pid;
events { worker_connections 1024; }
http {
  types { text/html html htm; text/plain txt; application/json json; }
  default_type application/octet-stream;
  access_log /var/log/nginx/access.log;
  sendfile on;
  keepalive_timeout 65;
  server {
    listen 80;
    listen [::]:80;
    server_name localhost;
    location / { root /usr/share/nginx/html; index index.html index.htm; }
    error_page 500 502 503 504 /50x.html;
    location = /50x.html { root /usr/share/nginx/html; }
  }
}
CONF
  cat >"$root/usr/share/nginx/html/index.html" <<'HTML'
<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>
</body>
</html>
HTML
  echo '<html><body><h1>An error occurred.</h1></body></html>' >"$root/usr/share/nginx/html/50x.html"
  finish_root "$root"
  echo '"Cmd":["nginx","-g","daemon off;"],"ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGQUIT"'
}
make_regression_issue_74839() {
  local root=$1
  base_root "$root"
  add_busybox "$root"
  cp "$BIN/regression-issue-74839" "$root/regression-issue-74839"
  echo '"Entrypoint":["/regression-issue-74839"]'
}
make_coredns() {
  local root=$1
  mkdir -p "$root"/{etc/ssl/certs,tmp}
  chmod 1777 "$root/tmp"
  cp "$BIN/coredns" "$root/coredns"
  # Upstream runs it as nonroot with this file capability so it can bind :53 (kubeadm's Deployment adds
  # NET_BIND_SERVICE to the bounding set and drops the rest).
  setcap cap_net_bind_service=+ep "$root/coredns" || die "setcap failed (apt-get install libcap2-bin)"
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  echo '"Entrypoint":["/coredns"],"User":"65532:65532","WorkingDir":"/","ExposedPorts":{"53/tcp":{},"53/udp":{}}'
}

# ---------- OCI archive: scripts/k8s/oci.sh ----------
# shellcheck source=oci.sh
source "$(dirname "${BASH_SOURCE[0]}")/oci.sh"

# ---------- build ----------
inputs_key() {
  {
    sha256sum "$0" "$(dirname "$0")/oci.sh"
    local f; for f in "$BIN/agnhost" "$BIN/coredns" "$BIN/regression-issue-74839" /var/lib/dpkg/status \
      "$KSRC/build/pause/linux/pause.c" "$NGINX_DEB_DIR"/nginx_*_amd64.deb; do
      stat -c '%n %s %Y' "$f" 2>/dev/null || echo "$f missing"
    done
  } | sha256sum | cut -d' ' -f1
}
build() {
  [[ $(id -u) -eq 0 ]] || die "run as root (setcap, image files owned by root)"
  local b; for b in agnhost coredns regression-issue-74839; do
    [[ -x $BIN/$b ]] || die "$BIN/$b missing: run scripts/k8s/build.sh --with-suite first"
  done
  mkdir -p "$OUT"
  # One builder at a time (setup.sh, conformance.sh's import and a test may overlap): the second waits, then
  # finds the cache current.
  exec 9>"$OUT/.lock"
  flock 9
  nginx_deb >/dev/null
  local key; key=$(inputs_key)
  if [[ $(cat "$OUT/.key" 2>/dev/null) == "$key" ]] && all_built; then
    echo "== images: cached ($OUT)"; return 0
  fi
  local work; work=$(mktemp -d /tmp/patu-images.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  local entry ref file fn root cfg
  for entry in "${IMAGES[@]}"; do
    ref=${entry%%|*} file=${entry##*|}
    fn=${file%.tar}; fn=make_${fn//-/_}
    root="$work/${file%.tar}"; mkdir -p "$root"
    cfg=$("$fn" "$root")
    step "image $ref" oci_archive "$root" "$ref" "$PATH_ENV" "$cfg" "$OUT/$file"
    rm -rf "$root"
  done
  echo "$key" >"$OUT/.key"
  rm -rf "$work"; trap - EXIT
}
all_built() { local e; for e in "${IMAGES[@]}"; do [[ -f $OUT/${e##*|} && -f $OUT/${e##*|}.digest ]] || return 1; done; }

ctr_import() { # address namespace tarball: quiet unless it fails
  local out; out=$(ctr --address "$1" -n "$2" images import "$3" 2>&1) || { echo "$out" >&2; die "ctr images import $3 failed"; }
}
import() {
  local address="" ns=k8s.io
  while (($#)); do
    case $1 in
      --address) address=${2:?--address needs a socket path}; shift 2 ;;
      --namespace) ns=${2:?--namespace needs a name}; shift 2 ;;
      *) die "import: unknown argument $1 (usage: import --address SOCK [--namespace NS])" ;;
    esac
  done
  [[ -n $address ]] || die "import: --address SOCK is required (the containerd socket)"
  command -v ctr >/dev/null || die "ctr not found (Debian's containerd package ships it)"
  build
  local have; have=$(ctr --address "$address" -n "$ns" images ls 2>/dev/null | awk 'NR > 1 { print $1 " " $3 }') \
    || die "ctr --address $address: containerd not answering"
  local entry ref file
  for entry in "${IMAGES[@]}"; do
    ref=${entry%%|*} file=${entry##*|}
    if grep -qxF "$ref $(cat "$OUT/$file.digest")" <<<"$have"; then
      echo "== import $ref: already there"; continue
    fi
    step "import $ref" ctr_import "$address" "$ns" "$OUT/$file"
  done
}

cmd=${1:-}; shift || true
case $cmd in
  build) step "images total" build; for e in "${IMAGES[@]}"; do ls -l "$OUT/${e##*|}"; done ;;
  import) import "$@" ;;
  list) for e in "${IMAGES[@]}"; do printf '%s\t%s\n' "${e%%|*}" "$OUT/${e##*|}"; done ;;
  *) echo "usage: scripts/k8s/images.sh build | import --address SOCK [--namespace NS] | list" >&2; exit 2 ;;
esac
