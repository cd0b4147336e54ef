#!/usr/bin/env bash
# A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1 for tests, the demo and the benchmark.
#   scripts/s3-server.sh start STATE_DIR   # prints the endpoint URL once the server takes requests
#   scripts/s3-server.sh stop STATE_DIR    # stops it by PID and removes its data and sockets
#   scripts/s3-server.sh run STATE_DIR     # runs it in the foreground (the Rust test harness)
#   scripts/s3-server.sh restart STATE_DIR # stops it (SIGTERM) keeping its data, starts it again on
#                                          # the same ports; prints the endpoint when ready (fault tests)
# Credentials: testkey / testsecret. FERRY_S3_TLS="CERT KEY" adds an HTTPS port (STATE/endpoint-https). Every port is picked free, so several servers can run at once;
# FERRY_S3_PORTS="S3 MASTER MGRPC VOLUME VGRPC FILER FGRPC ADMIN AGRPC DEBUG" chooses them instead.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
weed=${FERRY_WEED:-$repo/.venv/bin/weed}
cmd=${1:?usage: s3-server.sh start|stop STATE_DIR}
state=${2:?usage: s3-server.sh start|stop STATE_DIR}

case "$cmd" in
start|run)
  [ -x "$weed" ] || { echo "s3-server: $weed missing; run scripts/setup.sh" >&2; exit 1; }
  mkdir -p "$state/data"
  if [ -n "${FERRY_S3_PORTS:-}" ]; then
    read -r s3 master mgrpc volume vgrpc filer fgrpc admin agrpc debug <<<"$FERRY_S3_PORTS"
    [ -n "$debug" ] || { echo "s3-server: FERRY_S3_PORTS needs 10 ports" >&2; exit 2; }
  else
    read -r s3 master mgrpc volume vgrpc filer fgrpc admin agrpc debug < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
  fi
  echo "$s3 $master $mgrpc $volume $vgrpc $filer $fgrpc $admin $agrpc $debug" >"$state/ports.all"
  echo "http://127.0.0.1:$s3" >"$state/endpoint"
  echo "$s3 $((s3 + 10000)) $master $mgrpc $volume $vgrpc $filer $fgrpc $admin $agrpc" >"$state/ports"
  args=(mini -dir="$state/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false
    -webdav=false -admin.ui=false -s3.port="$s3" -s3.port.iceberg=0 -s3.port.lance=0
    -master.port="$master" -master.port.grpc="$mgrpc" -volume.port="$volume" -volume.port.grpc="$vgrpc"
    -filer.port="$filer" -filer.port.grpc="$fgrpc" -admin.port="$admin" -admin.port.grpc="$agrpc"
    -debug.port="$debug" -volume.max=2000)
  # FERRY_S3_TLS="CERT KEY": HTTPS as well, on one more free port, its URL in STATE/endpoint-https.
  if [ -n "${FERRY_S3_TLS:-}" ]; then
    read -r cert key <<<"$FERRY_S3_TLS"
    https=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    args+=(-s3.port.https="$https" -s3.cert.file="$cert" -s3.key.file="$key")
    echo "https://127.0.0.1:$https" >"$state/endpoint-https"
  fi
  export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret
  if [ "$cmd" = run ]; then
    exec "$weed" "${args[@]}" >"$state/weed.log" 2>&1
  fi
  setsid "$weed" "${args[@]}" >"$state/weed.log" 2>&1 &
  echo $! >"$state/pid"
  # Ready when the S3 gateway answers (403 to an unsigned request).
  for _ in $(seq 1 240); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$s3/" || true)
    if [ "$code" = 403 ] || [ "$code" = 200 ]; then
      sleep 0.5
      cat "$state/endpoint"
      exit 0
    fi
    kill -0 "$(cat "$state/pid")" 2>/dev/null || { echo "s3-server: weed exited; see $state/weed.log" >&2; tail -5 "$state/weed.log" >&2; exit 1; }
    sleep 0.25
  done
  echo "s3-server: not ready after 60 s; see $state/weed.log" >&2
  exit 1
  ;;
restart)
  [ -f "$state/ports.all" ] || { echo "s3-server: no server was started in $state" >&2; exit 1; }
  if [ -f "$state/pid" ]; then
    pid=$(cat "$state/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$state/pid"
  fi
  mv -f "$state/weed.log" "$state/weed.log.1" 2>/dev/null || true
  FERRY_S3_PORTS=$(cat "$state/ports.all") exec "$0" start "$state"
  ;;
stop)
  if [ -f "$state/pid" ]; then
    pid=$(cat "$state/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$state/pid"
  fi
  rm -rf "$state/data"
  # weed leaves Unix sockets named after its ports in the temp dir.
  for port in $(cat "$state/ports" 2>/dev/null); do rm -f "${TMPDIR:-/tmp}"/seaweedfs-*-"$port".sock; done
  ;;
*) echo "usage: s3-server.sh start|stop|run|restart STATE_DIR" >&2; exit 2 ;;
esac
