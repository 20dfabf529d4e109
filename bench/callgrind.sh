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
#   ROUTES=50 bench/callgrind.sh          # also affinity behind 50 routes (see peer.sh)
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

work=${OUT:-$(mktemp -d)}
KEEP=1 # the profiles
. bench/common.sh
affinity_binary
start_backends
write_urls

measure() { # name command...
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" "$@" 2>"$work/$name.err" &
  local pid=$!
  pids+=($pid)
  wait_port "$PROXY_PORT"
  wrk -t1 -c"$CONNS" -d3s -s "$work/urls.lua" "http://127.0.0.1:$PROXY_PORT/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c"$CONNS" -d"$DURATION" -s "$work/urls.lua" "http://127.0.0.1:$PROXY_PORT/" |
    awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # The dump taken right after the run (.out.1) holds every thread's
  # counts since they were zeroed; the one written at exit (.out) the rest.
  local instructions
  instructions=$(awk '/^summary:/ {print $2}' "$work/$name.out.1")
  awk -v n="$name" -v i="$instructions" -v r="$requests" \
    'BEGIN { printf "%-10s %9d requests  %8.0f instructions per request\n", n, r, i / r }'
}

write_affinity_config
echo "profiles in $work; wrk -t1 -c$CONNS -d$DURATION, $BACKENDS backends, URL key"
RUST_LOG=warn measure affinity "$BIN" -c "$work/affinity.toml"
if [ "${ROUTES:-0}" -gt 1 ]; then
  write_affinity_routes_config "$ROUTES"
  RUST_LOG=warn measure "aff-${ROUTES}r" "$BIN" -c "$work/affinity-routes.toml"
fi

if command -v haproxy >/dev/null; then
  write_haproxy_config
  measure haproxy haproxy -db -f "$work/haproxy.cfg"
fi
