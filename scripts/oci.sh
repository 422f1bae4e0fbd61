#!/usr/bin/env bash
# Packages dist/surgeguard.wasm as an OCI image Istio can pull (`url: oci://REF`), and pushes it.
#
#   scripts/oci.sh                         build the image layout only (dist/oci/, tag "latest")
#   scripts/oci.sh REGISTRY/REPO[:TAG]     build it, then push it with skopeo
#   ./build.sh oci [REF]                   the same, after building the module
#
# The image is Istio's "compat" variant, a plain OCI image that any registry and tool accepts:
# one layer (application/vnd.oci.image.layer.v1.tar+gzip) holding a single file, plugin.wasm.
# It is reproducible: the same module always gives the same digest (fixed tar metadata, gzip -n),
# so a WasmPlugin can pin `url: oci://REPO@sha256:...` or `sha256:` safely.
#
# Environment: SURGEGUARD_WASM (the module; default dist/surgeguard.wasm), OCI_LAYOUT (where the
# image layout goes; default dist/oci), OCI_PUSH_FLAGS (extra skopeo flags, e.g.
# "--dest-creds user:token"). A registry on 127.0.0.1 or localhost is pushed to over plain HTTP.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WASM=${SURGEGUARD_WASM:-$ROOT/dist/surgeguard.wasm}
LAYOUT=${OCI_LAYOUT:-$ROOT/dist/oci}
die() { printf 'oci.sh: %s\n' "$*" >&2; exit 1; }

[ $# -le 1 ] || die "usage: scripts/oci.sh [REGISTRY/REPO[:TAG]]"
REF=${1:-}
[ -f "$WASM" ] || die "$WASM not found: run ./build.sh first"
TAG=latest
REPO=$REF
# The tag is what follows the last ':' after the last '/' (a ':' before it is a registry port).
if [ -n "$REF" ] && [[ ${REF##*/} == *:* ]]; then TAG=${REF##*:}; REPO=${REF%:*}; fi
[[ $REF != *@* ]] || die "push by tag (REF:TAG); the digest is printed after the push"

sha256() { sha256sum "$1" | cut -d' ' -f1; }
# Stores FILE as a blob of the layout; prints its digest.
blob() { local d; d=$(sha256 "$1"); cp "$1" "$LAYOUT/blobs/sha256/$d"; echo "$d"; }

rm -rf "$LAYOUT"
mkdir -p "$LAYOUT/blobs/sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The layer: plugin.wasm in a tar with fixed metadata, gzip without name or time.
cp "$WASM" "$work/plugin.wasm"
chmod 0644 "$work/plugin.wasm"
tar --format=ustar --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf "$work/layer.tar" plugin.wasm
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
diff_id=$(sha256 "$work/layer.tar")
layer=$(blob "$work/layer.tar.gz")
layer_size=$(stat -c %s "$work/layer.tar.gz")

# The image config: a wasm "platform" and the layer's uncompressed digest, as OCI requires.
printf '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$diff_id" >"$work/config.json"
config=$(blob "$work/config.json")
config_size=$(stat -c %s "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",%s,%s,%s}' \
  "\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config\",\"size\":$config_size}" \
  "\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer\",\"size\":$layer_size}]" \
  "\"annotations\":{\"org.opencontainers.image.title\":\"surgeguard\",\"org.opencontainers.image.description\":\"surgeguard proxy-wasm filter for Envoy and Istio (plugin.wasm)\"}" \
  >"$work/manifest.json"
manifest=$(blob "$work/manifest.json")
manifest_size=$(stat -c %s "$work/manifest.json")

printf '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest" "$manifest_size" "$TAG" >"$LAYOUT/index.json"
echo "oci.sh: image layout $LAYOUT (tag $TAG), manifest sha256:$manifest, module sha256:$(sha256 "$WASM")" >&2

[ -n "$REF" ] || exit 0
command -v skopeo >/dev/null || die "skopeo is needed to push (Debian: apt-get install skopeo)"
flags=()
case "$REF" in
  127.0.0.1:*|localhost:*|127.0.0.1/*|localhost/*) flags+=(--dest-tls-verify=false) ;;
esac
# shellcheck disable=SC2206  # OCI_PUSH_FLAGS is a list of flags on purpose
flags+=(${OCI_PUSH_FLAGS:-})
skopeo copy --quiet "${flags[@]}" "oci:$LAYOUT:$TAG" "docker://$REF" >&2
echo "oci.sh: pushed $REF; in a WasmPlugin: url: oci://$REPO@sha256:$manifest" >&2
echo "sha256:$manifest"
