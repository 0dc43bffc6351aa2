# shellcheck shell=bash
# The one writer of OCI image archives for the test cluster (sourced by images.sh and cluster.sh): images are
# built from a root directory here, with no registry and no image builder, and imported with `ctr images import`.

# oci_archive <rootfs> <name:tag> <PATH> <config members> <out.tar>: a one-layer OCI image layout in a tar, named by the
# io.containerd.image.name annotation (what `ctr images import` uses). Prints nothing; the tarball is replaced
# only when its bytes would change.
oci_archive() {
  local rootfs=$1 ref=$2 path_env=$3 cfgfields=$4 out=$5 w; w=$(mktemp -d)
  mkdir -p "$w/blobs/sha256"
  # --xattrs: CoreDNS's file capability (security.capability) travels as a PAX record; containerd applies it.
  # PAX (which --xattrs implies) would also record atime/ctime and name its headers after tar's pid: dropped,
  # so the same inputs give the same layer digest (and `import` can skip what containerd already has).
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --xattrs --xattrs-include='security.capability' \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$rootfs" -cf "$w/layer.tar" .
  local layer; layer=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
  local lsize; lsize=$(stat -c %s "$w/layer.tar")
  mv "$w/layer.tar" "$w/blobs/sha256/$layer"
  # Env first: fields given later by the image win only where they are set.
  printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=%s"],%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"patu scripts/k8s/oci.sh"}]}' \
    "$path_env" "$cfgfields" "$layer" >"$w/config.json"
  local cfg; cfg=$(sha256sum "$w/config.json" | cut -d' ' -f1)
  local csize; csize=$(stat -c %s "$w/config.json")
  mv "$w/config.json" "$w/blobs/sha256/$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$cfg" "$csize" "$layer" "$lsize" >"$w/manifest.json"
  local man; man=$(sha256sum "$w/manifest.json" | cut -d' ' -f1)
  local msize; msize=$(stat -c %s "$w/manifest.json")
  mv "$w/manifest.json" "$w/blobs/sha256/$man"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$msize" "$ref" "${ref##*:}" >"$w/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$w/oci-layout"
  if [[ -f $out && $(cat "$out.digest" 2>/dev/null) == "sha256:$man" ]]; then
    rm -rf "$w"; return 0
  fi
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$w" -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  echo "sha256:$man" >"$out.digest"
  rm -rf "$w"
}
