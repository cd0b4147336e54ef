#!/usr/bin/env bash
# ferry against another S3 server on its default settings: Garage (not in CI: building it takes
# about 9 minutes on 2 cores).
#   scripts/compat.sh garage        # builds Garage once (cargo install into target/compat/garage),
#                                   # starts it on 127.0.0.1, runs a whole job and the fault suite
# GARAGE=/path/to/garage uses that binary instead of building one. Needs ferry built
# (target/x86_64-unknown-linux-gnu/release/ferry) and .venv (scripts/setup.sh).
# Ends with one line per part: "compat garage <version>: round trip ok|FAILED, faults N passed, M failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
server=${1:-garage}
[ "$server" = garage ] || { echo "usage: scripts/compat.sh garage" >&2; exit 2; }
ferry=$repo/target/x86_64-unknown-linux-gnu/release/ferry
[ -x "$ferry" ] || { echo "compat: build ferry first (cargo build --release)" >&2; exit 2; }

garage=${GARAGE:-$repo/target/compat/garage/bin/garage}
if [ ! -x "$garage" ]; then
  echo "compat: cargo install garage (about 9 minutes on 2 cores)" >&2
  cargo install garage --locked --root "$repo/target/compat/garage" >"$repo/target/compat-garage-build.log" 2>&1 \
    || { echo "compat: building Garage failed; see target/compat-garage-build.log" >&2; exit 1; }
fi
version=$("$garage" --version 2>/dev/null | head -n 1)

state=$(mktemp -d "${TMPDIR:-/tmp}/ferry-compat-garage.XXXXXX")
read -r s3port rpcport adminport < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
cat >"$state/garage.toml" <<EOF
metadata_dir = "$state/meta"
data_dir = "$state/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpcport"
rpc_public_addr = "127.0.0.1:$rpcport"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$adminport"
EOF
g() { "$garage" -c "$state/garage.toml" "$@"; }
"$garage" -c "$state/garage.toml" server >"$state/garage.log" 2>&1 &
pid=$!  # garage itself (not a subshell), so the trap stops the server
cleanup() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$state"; }
trap cleanup EXIT

node=""
for _ in $(seq 1 100); do
  node=$(g node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
  sleep 0.2
done
[ -n "$node" ] || { echo "compat: Garage did not start; log:" >&2; tail -20 "$state/garage.log" >&2; exit 1; }
g layout assign -z dc1 -c 1G "$node" >/dev/null
g layout apply --version 1 >/dev/null
keyinfo=$(g json-api CreateKey '{"name": "ferry-compat"}')
read -r key secret < <(python3 -c 'import json, sys; k = json.load(sys.stdin); print(k["accessKeyId"], k["secretAccessKey"])' <<<"$keyinfo")
[ -n "$key" ] && [ -n "$secret" ] || { echo "compat: could not read the key from: $keyinfo" >&2; exit 1; }
g key allow --create-bucket ferry-compat >/dev/null

export AWS_ENDPOINT_URL=http://127.0.0.1:$s3port AWS_REGION=garage FERRY_S3_FORCE_PATH_STYLE=true
export AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret
export FERRY_TEST_S3_ENDPOINT=$AWS_ENDPOINT_URL FERRY_TEST_S3_KEY=$key FERRY_TEST_S3_SECRET=$secret
export FERRY_TEST_S3_REGION=garage
g bucket create ferry-compat >/dev/null
g bucket allow --read --write --owner ferry-compat --key ferry-compat >/dev/null

# 1. A whole job, by hand: multipart input and output (24 MiB, 16 MiB parts), small and empty
#    files, a symlink, an empty directory; byte-identical where it must be.
job=$state/job
mkdir -p "$job/head/w/sub" "$job/head/w/empty" "$job/head/d" "$job/head/out"
head -c 25165824 /dev/urandom >"$job/head/d/in.dat"
printf 'hello\n' >"$job/head/w/sub/a.txt"
: >"$job/head/w/zero"
ln -s /etc/hostname "$job/head/w/link"
round_trip() {
  url=$("$ferry" stage --url s3://ferry-compat/p --job-id 1 --workdir "$job/head/w" \
          --input "$job/head/d/in.dat" --output "$job/head/out/result.dat") || return 1
  "$ferry" init --manifest "$url" --root "$job/pod" || return 1
  cmp "$job/head/d/in.dat" "$job/pod$job/head/d/in.dat" || return 1
  [ "$(readlink "$job/pod$job/head/w/link")" = /etc/hostname ] || return 1
  [ -d "$job/pod$job/head/w/empty" ] || return 1
  # The tool: changes a file, writes a multipart output and the exit code.
  printf 'changed\n' >"$job/pod$job/head/w/sub/a.txt"
  head -c 20971520 /dev/urandom >"$job/pod$job/head/out/result.dat"
  printf '0\n' >"$job/pod$job/head/w/galaxy_1.ec"
  "$ferry" sidecar --manifest "$url" --root "$job/pod" --quiet-ms 100 --timeout 60 || return 1
  "$ferry" collect --manifest "$url" || return 1
  cmp "$job/pod$job/head/out/result.dat" "$job/head/out/result.dat" || return 1
  [ "$(cat "$job/head/w/sub/a.txt")" = changed ] || return 1
  # Re-staging moves no dataset bytes (the HEAD answers "same size and checksum").
  "$ferry" stage --url s3://ferry-compat/p --job-id 2 --workdir "$job/head/w" \
    --input "$job/head/d/in.dat" >/dev/null 2>"$job/restage.log" || return 1
  grep -q '1 already in S3' "$job/restage.log"
}
if round_trip >"$job/round-trip.log" 2>&1; then rt=ok; else rt=FAILED; tail -20 "$job/round-trip.log" >&2; fi

# 2. The fault suite (fault proxy in front of Garage) and the HTTPS-free IAM recorder.
mkdir -p target/test-logs
.venv/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
  tests/faults/test_faults.py tests/faults/test_iam.py >target/test-logs/compat-garage.log 2>&1
summary=$(tail -n 1 target/test-logs/compat-garage.log)
echo "compat garage ${version:-unknown version}: round trip $rt; faults+iam: $summary (log: target/test-logs/compat-garage.log)"
[ "$rt" = ok ]
