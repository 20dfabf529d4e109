#!/usr/bin/env bash
# Latency at a fixed request rate: affinity, HAProxy and nginx in front of the
# same backends, each offered RATE requests/s (below what this machine can
# serve), in ROUNDS rounds, each round starting with the next proxy so that
# none always runs first; the table gives the medians over the rounds.
#
# bench/peer.sh drives every proxy as hard as it goes, so its latencies are
# those of a saturated machine, where the kernel's choice of which of the
# busy threads runs next (the load generator's, the proxy's, the backend's)
# decides the tail. Here h2load paces each of CONNS keep-alive connections at
# RATE / CONNS requests per second and logs every request's time; the
# percentiles come from that log. h2load's timers fire close together, so
# requests arrive in bursts: the direct run against one backend, each round,
# shows what the bursts, h2load and the backend cost without a proxy.
#
#   bench/rate.sh                               # 20,000 req/s, 64 conns, 10 s, 3 rounds
#   RATE=30000 ROUNDS=5 DURATION=20 bench/rate.sh
#   BIN=target/pgo/release/affinity bench/rate.sh   # bench/pgo.sh's build
#
# Needs h2load (apt-get install nghttp2-client), nginx and (optionally)
# haproxy. Everything listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-20000}
CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
BACKENDS=${BACKENDS:-8}
BASE_PORT=${BASE_PORT:-19100}
PROXY_PORT=${PROXY_PORT:-19080}

for tool in h2load nginx; do
  command -v "$tool" >/dev/null || { echo "rate.sh: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d)
. bench/common.sh
affinity_binary
start_backends
write_affinity_config
write_haproxy_config
write_nginx_config

# The same 500 URLs for every run (consistent hashing spreads them), cycled
# by h2load.
urls() { # port
  local i
  for i in $(seq 1 500); do printf 'http://127.0.0.1:%s/item/%d\n' "$1" $((i * 7919 % 1000003)); done
}

results=()
run() { # name port [pid]: pid's CPU is reported
  local name=$1 port=$2 pid=${3:-} u1=0 s1=0 u2=0 s2=0 out
  wait_port "$port"
  urls "$port" > "$work/urls.txt"
  # A second of warm-up: connections to the backends opened, caches filled.
  h2load --h1 -t 2 -c "$CONNS" --rps $((RATE / CONNS)) -D 1 -i "$work/urls.txt" >/dev/null 2>&1 || true
  [ -n "$pid" ] && read -r u1 s1 < <(proc_ticks "$pid")
  rm -f "$work/$name.log" # h2load appends to it
  out=$(h2load --h1 -t 2 -c "$CONNS" --rps $((RATE / CONNS)) -D "$DURATION" \
    -i "$work/urls.txt" --log-file="$work/$name.log" 2>&1)
  [ -n "$pid" ] && read -r u2 s2 < <(proc_ticks "$pid")
  local failed
  # h2load's failed, errored and timed-out requests.
  failed=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
  # Percentiles of the logged times (µs, third column), in ms; CPU in µs
  # per request, user + system.
  local line
  line=$(sort -n -k3 "$work/$name.log" | awk -v n="$name" -v t="$(getconf CLK_TCK)" \
    -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v failed="$failed" -v pid="$pid" '
    { a[NR] = $3 / 1000; if ($2 != 200) bad++ }
    END {
      cpu = pid == "" ? "-" : sprintf("%.1f", (u + s) * 1e6 / t / NR)
      printf "%s|%d|%.2f|%.2f|%.2f|%.2f|%.2f|%s|%d", n, NR, a[int(NR * 0.5)], a[int(NR * 0.9)],
        a[int(NR * 0.99)], a[int(NR * 0.999)], a[NR], cpu, bad + failed
    }')
  results+=("$line")
  echo "$line" | tr '|' ' '
}

# One proxy started, measured and stopped.
serve() { # name command...
  local name=$1 pid
  shift
  "$@" 2>"$work/$name.err" &
  pid=$!
  pids+=($pid)
  run "$name" "$PROXY_PORT" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
# (Named apart from the commands they run.)
with_affinity() { RUST_LOG=warn serve affinity "$BIN" -c "$work/affinity.toml"; }
with_haproxy() { serve haproxy haproxy -db -f "$work/haproxy.cfg"; }
with_nginx() { serve nginx nginx -c "$work/lb.conf" -e "$work/lb.err"; }
proxies=(with_affinity with_nginx)
command -v haproxy >/dev/null && proxies=(with_affinity with_haproxy with_nginx)

for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  run direct $((BASE_PORT + 1))
  # Each round starts with the next proxy, so none always runs first.
  n=${#proxies[@]}
  for i in $(seq 0 $((n - 1))); do
    "${proxies[$(((round - 1 + i) % n))]}"
  done
done

echo
echo "$RATE requests/s offered over $CONNS connections, ${DURATION}s, $BACKENDS backends, URL key, $ROUNDS rounds, $(nproc) cores"
echo "medians over the rounds (ms; CPU: the proxy's user + system µs per request)"
printf '%-10s %9s %7s %7s %7s %7s %7s %8s %7s\n' target requests p50 p90 p99 p99.9 max "CPU us" errors
printf '%s\n' "${results[@]}" | awk -F'|' '
  { n[$1]++; k = $1 SUBSEP n[$1]; for (i = 2; i <= 9; i++) v[k, i] = $i; if (!($1 in seen)) { seen[$1] = 1; order[++m] = $1 } }
  function median(name, col,   c, i, j, x, t) {
    c = n[name]
    for (i = 1; i <= c; i++) x[i] = v[name SUBSEP i, col]
    for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (x[j] + 0 < x[i] + 0) { t = x[i]; x[i] = x[j]; x[j] = t }
    return c % 2 ? x[(c + 1) / 2] : (x[c / 2] + x[c / 2 + 1]) / 2
  }
  END {
    for (o = 1; o <= m; o++) {
      name = order[o]
      cpu = v[name SUBSEP 1, 8] == "-" ? "-" : sprintf("%.1f", median(name, 8))
      printf "%-10s %9d %7.2f %7.2f %7.2f %7.2f %7.2f %8s %7d\n", name, median(name, 2), median(name, 3),
        median(name, 4), median(name, 5), median(name, 6), median(name, 7), cpu, median(name, 9)
    }
  }'
