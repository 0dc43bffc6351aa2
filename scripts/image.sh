#!/usr/bin/env bash
# Builds the patu:dev container image without a registry and without a Docker engine:
#   1. a root file system from this machine's own files: the patu tree (the same
#      selection `patu install` copies: launcher, dist, eBPF objects, production
#      node_modules) at /usr/lib/patu, /usr/bin/node, nft, busybox, and the shared
#      libraries they and libbpf.so.1 (loaded by koffi at run time) need
#   2. a smoke test of that root in a chroot (node starts, the CLI runs, libbpf and
#      nft load), so a missing library fails here and not on a node
#   3. `podman import` into a throw-away podman store, `podman save` as a
#      docker-archive named docker.io/library/patu:dev (what kubelet asks containerd
#      for when a pod says image: patu:dev)
# Output: build/image/patu-dev.tar. Load it on a node with one of:
#   ctr -n k8s.io images import build/image/patu-dev.tar        (containerd, kubeadm)
#   k3s ctr images import build/image/patu-dev.tar              (k3s)
#   podman load -i build/image/patu-dev.tar                     (podman, CRI-O's store)
# Needs root (chroot, podman), podman and busybox-static. The image is as portable as
# the build host: its glibc, node and libbpf are Debian 12's.
set -euo pipefail
# Node warns (and slows down) when this points at a file the chroot does not have.
unset NODE_EXTRA_CA_CERTS
cd "$(dirname "$0")/.."

OUT=${OUT:-build/image}
NAME=${NAME:-docker.io/library/patu:dev}
if [[ $(id -u) -ne 0 ]]; then
  echo "image: run as root (chroot smoke test, podman)" >&2
  exit 1
fi
for tool in podman ldd ldconfig; do
  command -v "$tool" >/dev/null || { echo "image: $tool not found" >&2; exit 1; }
done
[[ -x bin/patu && -f dist/cni.cjs && -f dist/src/install/install.js ]] || bash scripts/build.sh

work=$(mktemp -d /tmp/patu-image.XXXXXX)
cleanup() {
  umount "$work/rootfs/proc" 2>/dev/null || true
  # podman's overlay store may leave mounts; unmount before removing.
  podman --root "$work/store" --runroot "$work/run" --storage-driver vfs rmi -a -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
root=$work/rootfs
mkdir -p "$root"/{usr/lib/patu,usr/bin,usr/sbin,bin,etc,tmp,run,proc,sys,dev,var/lib/patu}
chmod 1777 "$root/tmp"

# 1a. The patu tree: exactly what `patu install` would copy.
node --input-type=module -e "
  const m = await import('$PWD/dist/src/install/install.js');
  for (const p of m.prefixContents(process.cwd())) console.log(p);
" | while IFS= read -r rel; do
  mkdir -p "$root/usr/lib/patu/$(dirname "$rel")"
  cp -a "$rel" "$root/usr/lib/patu/$rel"
done
echo "patu $(node -p "require('./package.json').version") image build from $PWD" > "$root/usr/lib/patu/.patu-install"

# 1b. Programs and every library they (and dlopen'd libbpf) link against, at the same paths.
copy_with_libs() {
  local f
  for f in "$@"; do
    cp -L --parents "$f" "$root"
    ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
      [[ -e "$root$lib" ]] || cp -L --parents "$lib" "$root"
    done
  done
}
NODE_BIN=$(command -v node)
[[ "$NODE_BIN" == /usr/bin/node ]] || echo "image: note: node is $NODE_BIN; bin/patu was built to exec it at that path" >&2
copy_with_libs "$NODE_BIN" "$(command -v nft)" /usr/lib/x86_64-linux-gnu/libbpf.so.1
for lib in libc.so.6; do copy_with_libs "/lib/x86_64-linux-gnu/$lib"; done
if [[ -x /bin/busybox ]]; then
  cp /bin/busybox "$root/bin/busybox"
  for app in sh ls cat mkdir rm sleep ps; do ln -sf busybox "$root/bin/$app"; done
fi
cp /etc/ld.so.conf "$root/etc/" && cp -r /etc/ld.so.conf.d "$root/etc/"
ldconfig -r "$root"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"

# 2. Smoke test in a chroot. /proc as in a container: the launcher finds its tree
#    through /proc/self/exe (without it, it would fall back to this checkout).
mount -t proc proc "$root/proc"
chroot "$root" /usr/lib/patu/bin/patu --version >/dev/null
chroot "$root" /usr/bin/node --input-type=module -e "
  const k = (await import('/usr/lib/patu/node_modules/koffi/index.js')).default;
  k.load('libbpf.so.1'); k.load('libc.so.6');
"
chroot "$root" /usr/sbin/nft --version >/dev/null
umount "$root/proc"

# 3. An image from the root, saved under the name kubelet will ask for.
mkdir -p "$OUT"
P=(podman --root "$work/store" --runroot "$work/run" --storage-driver vfs)
tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
"${P[@]}" import \
  --change 'ENTRYPOINT ["/usr/lib/patu/bin/patu"]' \
  --change 'ENV PATH=/usr/lib/patu/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'LABEL org.opencontainers.image.title=patu' \
  "$work/rootfs.tar" "$NAME" >"$work/podman.log" 2>&1 || { cat "$work/podman.log" >&2; exit 1; }
rm -f "$OUT/patu-dev.tar"
"${P[@]}" save --format docker-archive -o "$OUT/patu-dev.tar" "$NAME" >"$work/podman.log" 2>&1 || { cat "$work/podman.log" >&2; exit 1; }
echo "image: $NAME -> $OUT/patu-dev.tar ($(du -h "$OUT/patu-dev.tar" | cut -f1))"
