#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (real SeaweedFS on 127.0.0.1), then the pod and
# Galaxy tests (podman kube play, Galaxy's own code). Installs what it needs first (scripts/setup.sh).
# Ends with one line: "ferry tests: N passed, M failed".
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/setup.sh || { echo "ferry tests: 0 passed, 1 failed"; exit 1; }
source scripts/podman-env.sh

state=$repo/target/test-s3/shared
scripts/s3-server.sh stop "$state" >/dev/null 2>&1 || true
trap 'scripts/s3-server.sh stop "$state"' EXIT
FERRY_TEST_S3_ENDPOINT=$(scripts/s3-server.sh start "$state") || { echo "ferry tests: 0 passed, 1 failed"; exit 1; }
export FERRY_TEST_S3_ENDPOINT

mkdir -p target/test-logs
cargo test --release --locked 2>&1 | tee target/test-logs/cargo.log
cargo_rc=${PIPESTATUS[0]}
read -r rust_pass rust_fail < <(awk '/^test result:/ {p+=$4; f+=$6} END {print p+0, f+0}' target/test-logs/cargo.log)

py_pass=0 py_fail=0 py_rc=0
py_dirs=()
for d in tests/pods tests/galaxy tests/faults; do
  compgen -G "$d/test_*.py" >/dev/null && py_dirs+=("$d")
done
if [ ${#py_dirs[@]} -gt 0 ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning "${py_dirs[@]}" 2>&1 | tee target/test-logs/pytest.log
  py_rc=${PIPESTATUS[0]}
  summary=$(tail -n 1 target/test-logs/pytest.log)
  count() { awk -v want="$1" '{for (i = 1; i < NF; i++) if ($(i + 1) ~ want) s += $i} END {print s + 0}' <<<"$summary"; }
  py_pass=$(count '^passed')
  py_fail=$(count '^(failed|errors?)')
  [ "$py_rc" = 5 ] && py_rc=0  # no tests collected is not a failure of the suite itself
fi

passed=$((rust_pass + py_pass)) failed=$((rust_fail + py_fail))
if [ "$cargo_rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
if [ "$py_rc" != 0 ] && [ "$failed" = 0 ]; then failed=1; fi
echo "ferry tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
