#!/usr/bin/env bash
# Build the local pod-test images, no registry:
#   localhost/ferry:dev       FROM scratch + the given static ferry binary at /ferry
#                             (FERRY_IMAGE overrides the name, so two checkouts can test side by side)
#   localhost/ferry-tool:dev  FROM scratch + busybox-static (applets in /bin, /tmp 1777)
# Usage: scripts/build-images.sh PATH/TO/STATIC/ferry
# A build is skipped when the image exists with the same input hash (label ferry.input.sha256).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 1 ] || { echo "usage: $0 PATH/TO/STATIC/ferry" >&2; exit 2; }
binary=$1
[ -f "$binary" ] || { echo "build-images.sh: no such file: $binary" >&2; exit 2; }
if ldd "$binary" 2>/dev/null | grep -q '=>'; then
  echo "build-images.sh: $binary is dynamically linked; FROM scratch needs a static binary" >&2
  exit 2
fi

"$repo/scripts/podman-setup.sh" >/dev/null
# shellcheck source=podman-env.sh
source "$repo/scripts/podman-env.sh"

label=ferry.input.sha256

# one build at a time (tests may call this concurrently)
mkdir -p "$repo/target/images"
exec 9>"$repo/target/images/.lock"
flock 9

# build NAME CONTEXT CONTAINERFILE HASH
build() {
  local name=$1 ctx=$2 file=$3 hash=$4 old
  old=$(podman image inspect --format "{{index .Labels \"$label\"}}" "$name" 2>/dev/null || true)
  if [ "$old" = "$hash" ]; then
    echo "$name up to date"
    return
  fi
  local old_id
  old_id=$(podman image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  podman build --quiet --layers=false --pull=never --network=none --label "$label=$hash" \
    -t "$name" -f "$file" "$ctx" >/dev/null
  # drop the image this one replaced, if nothing else uses it
  if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$name")" ]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true
  fi
  echo "$name built"
}

# ferry image
ctx=$repo/target/images/ferry
mkdir -p "$ctx"
# Stripped: the debug line tables stay in target/ for backtraces, the image stays small.
objcopy --strip-debug "$binary" "$ctx/ferry.tmp" && mv -f "$ctx/ferry.tmp" "$ctx/ferry"
# TLS to a real S3 endpoint needs the CA bundle (Debian's ca-certificates).
cp -f /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
hash=$(cat "$ctx/ferry" "$ctx/ca-certificates.crt" "$repo/images/ferry/Containerfile" | sha256sum | cut -d' ' -f1)
build "${FERRY_IMAGE:-localhost/ferry:dev}" "$ctx" "$repo/images/ferry/Containerfile" "$hash"

# tool image (busybox)
ctx=$repo/target/images/tool
bb=/bin/busybox
hash=$(cat "$bb" "$repo/images/tool/Containerfile" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)
old=$(podman image inspect --format "{{index .Labels \"$label\"}}" localhost/ferry-tool:dev 2>/dev/null || true)
if [ "$old" != "$hash" ]; then
  rm -rf "$ctx"
  root=$ctx/rootfs
  mkdir -p "$root/bin" "$root/usr" "$root/tmp" "$root/etc"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
  done
  # Galaxy's runner may start the job with /bin/bash; busybox has no bash applet.
  printf '#!/bin/sh\nexec /bin/sh "$@"\n' > "$root/bin/bash"
  chmod 755 "$root/bin/bash"
  ln -s bin "$root/sbin"
  ln -s ../bin "$root/usr/bin"
  ln -s ../bin "$root/usr/sbin"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
fi
build localhost/ferry-tool:dev "$ctx" "$repo/images/tool/Containerfile" "$hash"
