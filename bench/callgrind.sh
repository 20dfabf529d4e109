#!/usr/bin/env bash
# Instructions per request: affinity and HAProxy under valgrind's callgrind.
#
# Instruction counts do not move with the machine's load, unlike requests/s
# (see bench/peer.sh), so they compare two builds, or two proxies, across
# runs. For each proxy: start it under `valgrind --tool=callgrind` in front
# of BACKENDS nginx backends (consistent hashing on the URL), warm it up,
# zero the counters, drive it with wrk (1 thread, CONNS connections, random
# URLs) for DURATION, dump the counters and divide the instructions executed
# in user space (all threads) by the requests wrk completed.
#
#   bench/callgrind.sh                    # affinity, then HAProxy if installed
#   BIN=/path/to/affinity bench/callgrind.sh
#
# Needs valgrind, wrk and nginx (apt-get install valgrind wrk nginx haproxy).
# Everything listens on 127.0.0.1 only and is stopped on exit. The profiles
# stay in $OUT (default: a temporary directory, printed) for
# callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONNS=${CONNS:-16}
BACKENDS=${BACKENDS:-8}
BASE_PORT=${BASE_PORT:-19200}
PROXY_PORT=${PROXY_PORT:-19280}

for tool in valgrind callgrind_control wrk nginx; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is required" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=target/release/affinity
fi

OUT=${OUT:-$(mktemp -d)}
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "callgrind.sh: nothing listens on port $1" >&2
  return 1
}

{
  echo "worker_processes 1; daemon off; pid $OUT/backends.pid; error_log $OUT/backends.err;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off; keepalive_requests 100000;"
  for i in $(seq 1 "$BACKENDS"); do
    echo "  server { listen 127.0.0.1:$((BASE_PORT + i)); location / { return 200 \"backend-$i\n\"; } }"
  done
  echo "}"
} > "$OUT/backends.conf"
nginx -c "$OUT/backends.conf" -e "$OUT/backends.err" &
pids+=($!)
for i in $(seq 1 "$BACKENDS"); do wait_port $((BASE_PORT + i)); done

cat > "$OUT/urls.lua" <<'LUA'
math.randomseed(42)
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, 1000000))
end
LUA

measure() { # name command...
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.out" "$@" 2>"$OUT/$name.err" &
  local pid=$!
  pids+=($pid)
  wait_port "$PROXY_PORT"
  wrk -t1 -c"$CONNS" -d3s -s "$OUT/urls.lua" "http://127.0.0.1:$PROXY_PORT/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s "$OUT/urls.lua" "http://127.0.0.1:$PROXY_PORT/" |
    awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # The dump taken right after the run (.out.1) holds every thread's
  # counts since they were zeroed; the one written at exit (.out) the rest.
  local instructions
  instructions=$(awk '/^summary:/ {print $2}' "$OUT/$name.out.1")
  awk -v n="$name" -v i="$instructions" -v r="$requests" \
    'BEGIN { printf "%-10s %9d requests  %8.0f instructions per request\n", n, r, i / r }'
}

{
  echo "[listener]"
  echo "address = \"127.0.0.1:$PROXY_PORT\""
  echo "[balancer]"
  echo "algorithm = \"maglev\""
  echo "key = \"url\""
  echo "[health_check]"
  echo "interval = \"5s\""
  for i in $(seq 1 "$BACKENDS"); do
    echo "[[backends]]"
    echo "name = \"backend-$i\""
    echo "url = \"http://127.0.0.1:$((BASE_PORT + i))\""
  done
} > "$OUT/affinity.toml"
echo "profiles in $OUT; wrk -t1 -c$CONNS -d$DURATION, $BACKENDS backends, URL key"
RUST_LOG=warn measure affinity "$BIN" -c "$OUT/affinity.toml"

if command -v haproxy >/dev/null; then
  {
    echo "global"
    echo "  nbthread 2"
    echo "  maxconn 4096"
    echo "defaults"
    echo "  mode http"
    echo "  timeout connect 1s"
    echo "  timeout client 30s"
    echo "  timeout server 30s"
    echo "  http-reuse always"
    echo "frontend fe"
    echo "  bind 127.0.0.1:$PROXY_PORT"
    echo "  default_backend be"
    echo "backend be"
    echo "  balance uri"
    echo "  hash-type consistent"
    for i in $(seq 1 "$BACKENDS"); do
      echo "  server backend-$i 127.0.0.1:$((BASE_PORT + i))"
    done
  } > "$OUT/haproxy.cfg"
  measure haproxy haproxy -db -f "$OUT/haproxy.cfg"
fi
