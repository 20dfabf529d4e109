#!/usr/bin/env bash
# TLS benchmark: affinity against HAProxy, same machine, same run, same
# certificate (ECDSA P-256, made here with openssl).
#
# Two measures for each proxy, in front of BACKENDS nginx backends
# (consistent hashing on the URL, as bench/peer.sh):
#  * new TLS handshakes per second: h2load opens HANDSHAKES connections,
#    CONNS at a time, each doing one HTTP/1.1 request over a full handshake
#    (h2load does not resume sessions), and the rate is connections over
#    the time it took;
#  * requests per second over TLS keep-alive connections: wrk over https,
#    CONNS connections, DURATION, random URLs.
# Both also report the proxy's CPU per connection or request (user +
# system, from /proc), which the machine's load moves less than the rates.
#
#   bench/tls.sh
#   DURATION=20s CONNS=64 HANDSHAKES=20000 bench/tls.sh
#
# Needs openssl, h2load (nghttp2-client), wrk, nginx and haproxy.
# Everything listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
HANDSHAKES=${HANDSHAKES:-10000}
BACKENDS=${BACKENDS:-8}
BASE_PORT=${BASE_PORT:-19300}
PROXY_PORT=${PROXY_PORT:-19443}

for tool in openssl h2load wrk nginx haproxy; do
  command -v "$tool" >/dev/null || { echo "tls.sh: $tool is required" >&2; exit 1; }
done
cargo build --release --quiet

work=$(mktemp -d)
. bench/common.sh
start_backends
write_urls

write_certificate
cat "$work/site.pem" "$work/site.key" > "$work/site-haproxy.pem"

results=()
measure() { # name pid
  local name=$1 pid=$2 u1 s1 u2 s2 out rate per
  wait_port "$PROXY_PORT"
  # Warm up: the backend connections, the session cache.
  h2load --h1 -n 200 -c 20 "https://127.0.0.1:$PROXY_PORT/warm" >/dev/null 2>&1 || true

  # Handshakes: HANDSHAKES connections, one request each, CONNS at a time.
  read -r u1 s1 < <(proc_ticks "$pid")
  local started ended
  started=$(date +%s.%N)
  local rounds=$((HANDSHAKES / CONNS))
  for _ in $(seq 1 "$rounds"); do
    h2load --h1 -n "$CONNS" -c "$CONNS" -t "$THREADS" "https://127.0.0.1:$PROXY_PORT/handshake" \
      >"$work/h2load.out" 2>&1
    grep -q "$CONNS succeeded, 0 failed" "$work/h2load.out" || { echo "tls.sh: $name: handshakes failed:"; cat "$work/h2load.out"; } >&2
  done
  ended=$(date +%s.%N)
  read -r u2 s2 < <(proc_ticks "$pid")
  local handshakes=$((rounds * CONNS))
  rate=$(awk -v n="$handshakes" -v a="$started" -v b="$ended" 'BEGIN { printf "%.0f", n / (b - a) }')
  per=$(awk -v n="$handshakes" -v t="$(getconf CLK_TCK)" -v u=$((u2 - u1)) -v s=$((s2 - s1)) \
    'BEGIN { printf "%.1f", (u + s) / t * 1e6 / n }')
  local hs_rate=$rate hs_cpu=$per

  # Requests over TLS keep-alive connections.
  wrk -t"$THREADS" -c"$CONNS" -d1s -s "$work/urls.lua" "https://127.0.0.1:$PROXY_PORT/" >/dev/null 2>&1 || true
  read -r u1 s1 < <(proc_ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/urls.lua" "https://127.0.0.1:$PROXY_PORT/")
  read -r u2 s2 < <(proc_ticks "$pid")
  local rps p99 requests errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  per=$(awk -v n="$requests" -v t="$(getconf CLK_TCK)" -v u=$((u2 - u1)) -v s=$((s2 - s1)) \
    'BEGIN { printf "%.1f", (u + s) / t * 1e6 / n }')
  results+=("$name|$hs_rate|$hs_cpu|$rps|$p99|$per|${errors:-none}")
}

# --- affinity -------------------------------------------------------------------
{
  echo "[[listeners]]"
  echo "name = \"tls\""
  echo "address = \"127.0.0.1:$PROXY_PORT\""
  echo "tls.certificates = [{ cert = \"$work/site.pem\", key = \"$work/site.key\" }]"
  echo "[[pools]]"
  echo "name = \"main\""
  echo "algorithm = \"maglev\""
  echo "key = \"url\""
  echo "backends = ["
  for i in $(seq 1 "$BACKENDS"); do
    echo "  { name = \"backend-$i\", url = \"http://127.0.0.1:$((BASE_PORT + i))\" },"
  done
  echo "]"
} > "$work/affinity.toml"
RUST_LOG=warn target/release/affinity -c "$work/affinity.toml" 2>"$work/affinity.err" &
apid=$!
pids+=($apid)
measure affinity "$apid"
kill "$apid"; wait "$apid" 2>/dev/null || true

# --- HAProxy ----------------------------------------------------------------------
write_haproxy_config
sed -i "s|  bind 127.0.0.1:$PROXY_PORT|  bind 127.0.0.1:$PROXY_PORT ssl crt $work/site-haproxy.pem alpn h2,http/1.1|" "$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.err" &
hpid=$!
pids+=($hpid)
measure haproxy "$hpid"
kill "$hpid"; wait "$hpid" 2>/dev/null || true

# --- report ---------------------------------------------------------------------
echo
echo "ECDSA P-256, $BACKENDS backends, $CONNS connections, $THREADS client threads, $(nproc) cores"
printf '%-10s %14s %16s %14s %10s %16s  %s\n' target "handshakes/s" "CPU us/handshake" "requests/s" p99 "CPU us/request" errors
for r in "${results[@]}"; do
  IFS='|' read -r name hs hscpu rps p99 cpu errors <<<"$r"
  printf '%-10s %14s %16s %14s %10s %16s  %s\n' "$name" "$hs" "$hscpu" "$rps" "$p99" "$cpu" "$errors"
done
IFS='|' read -r _ ahs _ arps _ <<<"${results[0]}"
IFS='|' read -r _ hhs _ hrps _ <<<"${results[1]}"
awk -v a="$ahs" -v h="$hhs" -v ar="$arps" -v hr="$hrps" 'BEGIN {
  printf "\naffinity / HAProxy: handshakes/s %.2fx, requests/s over TLS %.2fx\n", a / h, ar / hr }'
