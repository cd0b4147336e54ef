#!/usr/bin/env bash
# Prepare this machine (Debian 12, as root) to run pods with `podman kube play`.
# Idempotent and fast when already done. See images/README.md.
#   - installs podman runc catatonit busybox-static (apt, only when something is missing)
#   - writes <repo>/target/containers.conf (runtime runc, ulimits this host can grant)
# Afterwards: `source scripts/podman-env.sh` (exports CONTAINERS_CONF).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

if command -v podman >/dev/null 2>&1 && [ -x /bin/busybox ] \
   && have_pkg runc && have_pkg catatonit; then
  :
else
  if [ "$(id -u)" != 0 ]; then
    echo "podman-setup.sh: packages missing and not root; run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends podman runc catatonit busybox-static
fi

# crun 1.8.1 (Debian 12) refuses the hybrid cgroup layout: use runc.
# Root here cannot raise its own hard rlimits; podman asks for 1048576 unless told otherwise.
nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768

mkdir -p "$repo/target"
conf="$repo/target/containers.conf"
want="[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]
[engine]
runtime = \"runc\""
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  tmp=$(mktemp "$conf.XXXXXX")
  printf '%s\n' "$want" > "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$conf"
fi
echo "podman ready; CONTAINERS_CONF=$conf"
