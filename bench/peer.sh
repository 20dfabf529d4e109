#!/usr/bin/env bash
# Peer benchmark: affinity against HAProxy and nginx, same machine, same run.
#
# Starts BACKENDS nginx backends on 127.0.0.1 (each answers every path with its
# own name), then, one at a time, affinity, HAProxy and nginx in front of them
# with equivalent consistent-hash-on-URL configs, and drives each with wrk for
# DURATION over CONNS keep-alive connections and random URLs. A direct run
# against one backend gives the ceiling. Prints requests/s, p50, p99 and the
# proxy's RSS side by side, and the ratios to HAProxy.
#
#   bench/peer.sh                          # defaults: 8 backends, 64 conns, 10s
#   DURATION=30s CONNS=64 bench/peer.sh
#
# Needs wrk, nginx and (optionally) haproxy: `apt-get install wrk nginx haproxy`.
# Everything listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BACKENDS=${BACKENDS:-8}
BASE_PORT=${BASE_PORT:-19100}
PROXY_PORT=${PROXY_PORT:-19080}

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "peer.sh: $tool is required (apt-get install $tool)" >&2; exit 1; }
done
cargo build --release --quiet

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "peer.sh: nothing listens on port $1" >&2
  return 1
}

# --- backends: one nginx with a server per port --------------------------------
{
  echo "worker_processes 1; daemon off; pid $work/backends.pid; error_log $work/backends.err;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off; keepalive_requests 100000;"
  for i in $(seq 1 "$BACKENDS"); do
    echo "  server { listen 127.0.0.1:$((BASE_PORT + i)); location / { return 200 \"backend-$i\n\"; } }"
  done
  echo "}"
} > "$work/backends.conf"
nginx -c "$work/backends.conf" -e "$work/backends.err" &
pids+=($!)
for i in $(seq 1 "$BACKENDS"); do wait_port $((BASE_PORT + i)); done

# --- the load: random URLs so that consistent hashing spreads them -------------
cat > "$work/urls.lua" <<'LUA'
math.randomseed(42)
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, 1000000))
end
LUA

results=()
run_wrk() { # name port pid
  local name=$1 port=$2 pid=${3:-}
  wait_port "$port"
  wrk -t"$THREADS" -c"$CONNS" -d1s -s "$work/urls.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  local out rss="-"
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/urls.lua" "http://127.0.0.1:$port/")
  if [ -n "$pid" ]; then
    rss=$(ps -o rss= -p "$pid" | awk '{printf "%.1f", $1/1024}')
  fi
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  results+=("$name|$rps|$p50|$p99|$rss|${errors:-none}")
}

# --- direct: the ceiling --------------------------------------------------------
run_wrk direct $((BASE_PORT + 1))

# --- affinity -------------------------------------------------------------------
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
} > "$work/affinity.toml"
RUST_LOG=warn target/release/affinity -c "$work/affinity.toml" 2>"$work/affinity.err" &
apid=$!
pids+=($apid)
run_wrk affinity "$PROXY_PORT" "$apid"
kill "$apid"; wait "$apid" 2>/dev/null || true

# --- HAProxy: balance uri, consistent hashing -----------------------------------
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
  } > "$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.err" &
  hpid=$!
  pids+=($hpid)
  run_wrk haproxy "$PROXY_PORT" "$hpid"
  kill "$hpid"; wait "$hpid" 2>/dev/null || true
fi

# --- nginx: hash $request_uri consistent ----------------------------------------
{
  echo "worker_processes 2; daemon off; pid $work/lb.pid; error_log $work/lb.err;"
  echo "events { worker_connections 4096; }"
  echo "http { access_log off;"
  echo "  upstream pool { hash \$request_uri consistent; keepalive 64;"
  for i in $(seq 1 "$BACKENDS"); do
    echo "    server 127.0.0.1:$((BASE_PORT + i));"
  done
  echo "  }"
  echo "  server { listen 127.0.0.1:$PROXY_PORT; location / { proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  echo "}"
} > "$work/lb.conf"
nginx -c "$work/lb.conf" -e "$work/lb.err" &
npid=$!
pids+=($npid)
sleep 0.3
# nginx's workers hold the memory; sum the RSS of the master and its workers.
run_wrk nginx "$PROXY_PORT"
nrss=$(ps -o rss= --ppid "$npid" -p "$npid" | awk '{s+=$1} END {printf "%.1f", s/1024}')
results[-1]=$(awk -F'|' -v r="$nrss" 'BEGIN{OFS="|"} {$5=r; print}' <<<"${results[-1]}")
kill "$npid"; wait "$npid" 2>/dev/null || true

# --- report ---------------------------------------------------------------------
echo
echo "$BACKENDS backends, URL key, $CONNS connections, $THREADS wrk threads, $DURATION, $(nproc) cores"
printf '%-10s %12s %10s %10s %10s  %s\n' target "requests/s" p50 p99 "RSS MiB" errors
haproxy_rps=""
for r in "${results[@]}"; do
  IFS='|' read -r name rps p50 p99 rss errors <<<"$r"
  printf '%-10s %12s %10s %10s %10s  %s\n' "$name" "$rps" "$p50" "$p99" "$rss" "$errors"
  [ "$name" = haproxy ] && haproxy_rps=$rps
done
if [ -n "$haproxy_rps" ]; then
  echo
  for r in "${results[@]}"; do
    IFS='|' read -r name rps _ <<<"$r"
    awk -v n="$name" -v a="$rps" -v h="$haproxy_rps" 'BEGIN { printf "%-10s %.2fx HAProxy\n", n, a / h }'
  done
fi
