#!/usr/bin/env bash
# TCP benchmark: affinity's `tcp` listeners against HAProxy `mode tcp` and
# nginx `stream`, same machine, same run, same backends.
#
# Each proxy in turn (never two at once) listens on two ports, each with its
# own pool of two backends, and hashes the client's address consistently:
# affinity's tcp key, HAProxy's `balance source` + `hash-type consistent`,
# nginx's `hash $remote_addr consistent`. Every client here is 127.0.0.1, so
# under all three every connection goes to the same one of the two backends.
# Two measures:
#  * new connections per second: wrk sends `Connection: close` over CONNS
#    connections for DURATION to PROXY_PORT, whose backends are nginx
#    answering a short body; wrk opens a new connection for each request, so
#    each request is a new client connection and a new backend connection.
#    p50/p99 are wrk's: from the request written to the response read (the
#    connect is not in them).
#  * bulk throughput: one iperf3 stream for BULK_SECONDS from the client
#    (`up`), then one to it (`-R`, `down`), through PROXY_PORT+1 to iperf3
#    servers (iperf3's control and data connections both come from
#    127.0.0.1, so they reach the same server through every proxy).
# For both it reports the proxy's CPU (user + system, from /proc/PID/stat,
# nginx's workers included): per connection, and per GiB relayed (both
# directions together). On a shared 2-core machine these move far less
# from run to run than the rates. `direct` is the client against one
# backend (wrk) or iperf3 server: the ceiling.
#
#   bench/tcp.sh                           # defaults: 64 conns, 10s, 5s each way
#   DURATION=20s CONNS=128 BULK_SECONDS=10 bench/tcp.sh
#   ROUNDS=3 bench/tcp.sh                  # the proxies in turn, three times over
#
# One round takes about 90 s. With ROUNDS=N the proxies run in turn N times
# (affinity, HAProxy, nginx, affinity, ...), each round's rows compared with
# that round's HAProxy: on a noisy machine, a drift weighs on all alike.
#
# Affinity runs with its default workers (one per core: std's
# available_parallelism), HAProxy with `nbthread 2`, nginx with
# `worker_processes 2`; affinity with RUST_LOG=warn (its access log is off
# unless RUST_LOG turns it on), HAProxy and nginx without logs.
#
# Short connections leave TIME_WAIT sockets behind (the backend and the
# proxy close first); the kernel's default `net.ipv4.tcp_tw_reuse = 2`
# (reuse for loopback) lets new connections through anyway. The script
# changes no sysctl; it prints the values it ran with.
#
# Needs wrk, nginx, haproxy and iperf3 (`apt-get install wrk nginx haproxy
# iperf3`); nginx's stream module (`apt-get install libnginx-mod-stream`)
# for the nginx row, which is skipped without it.
# Everything listens on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
BULK_SECONDS=${BULK_SECONDS:-5}
BASE_PORT=${BASE_PORT:-19400}
BULK_BASE_PORT=${BULK_BASE_PORT:-19410}
PROXY_PORT=${PROXY_PORT:-19480}
BULK_PORT=$((PROXY_PORT + 1))
BACKENDS=2
ROUNDS=${ROUNDS:-1}
STREAM_MODULE=${STREAM_MODULE:-/usr/lib/nginx/modules/ngx_stream_module.so}

for tool in wrk nginx haproxy iperf3; do
  command -v "$tool" >/dev/null || { echo "tcp.sh: $tool is required (apt-get install $tool)" >&2; exit 1; }
done
cargo build --release --quiet
affinity=${CARGO_TARGET_DIR:-target}/release/affinity

load=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d)
. bench/common.sh
start_backends
for i in $(seq 1 "$BACKENDS"); do
  iperf3 -s -B 127.0.0.1 -p $((BULK_BASE_PORT + i)) >"$work/iperf3-$i.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 1 "$BACKENDS"); do wait_port $((BULK_BASE_PORT + i)); done

# iperf3's JSON (-J): the receiver's total, "BYTES SECONDS".
iperf_received() {
  awk '/"sum_received"/ { f = 1 }
       f && /"bytes"/   { gsub(/[^0-9]/, ""); b = $0 }
       f && /"seconds"/ { gsub(/[^0-9.]/, ""); s = $0 }
       f && b != "" && s != "" { print b, s; exit }' "$1"
}

# One iperf3 run to port $1 (extra arguments: -R), into $work/iperf.json;
# prints "BYTES SECONDS CPU_TICKS" (CPU of pid $2, 0 without one), or
# "0 0 0" when iperf3 failed.
bulk() {
  local port=$1 pid=$2 u1=0 s1=0 u2=0 s2=0 got
  shift 2
  [ -n "$pid" ] && read -r u1 s1 < <(proc_ticks "$pid")
  if iperf3 -c 127.0.0.1 -p "$port" -t "$BULK_SECONDS" -J "$@" >"$work/iperf.json" 2>&1; then
    [ -n "$pid" ] && read -r u2 s2 < <(proc_ticks "$pid")
    got=$(iperf_received "$work/iperf.json")
    echo "${got:-0 0} $((u2 - u1 + s2 - s1))"
  else
    echo "tcp.sh: iperf3 to port $port $* failed:" >&2
    grep -m3 '"error"' "$work/iperf.json" >&2 || tail -3 "$work/iperf.json" >&2
    echo "0 0 0"
  fi
}

results=()
measure() { # name conn_port bulk_port [pid]: pid's CPU is reported
  local name=$1 port=$2 bport=$3 pid=${4:-}
  wait_port "$port"
  wait_port "$bport"
  local tck u1=0 s1=0 u2=0 s2=0 out
  tck=$(getconf CLK_TCK)

  # New connections: one request each.
  wrk -t"$THREADS" -c"$CONNS" -d1s -H 'Connection: close' "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  [ -n "$pid" ] && read -r u1 s1 < <(proc_ticks "$pid")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H 'Connection: close' "http://127.0.0.1:$port/")
  [ -n "$pid" ] && read -r u2 s2 < <(proc_ticks "$pid")
  local rate p50 p99 requests errors cpu="-"
  rate=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ' | sed 's/  */ /g')
  # µs per connection: user + system.
  [ -n "$pid" ] && cpu=$(awk -v n="$requests" -v t="$tck" -v u=$((u2 - u1)) -v s=$((s2 - s1)) \
    'BEGIN { f = 1e6 / t / n; printf "%.1f+%.1f", u * f, s * f }')

  # Bulk: one stream each way.
  local ub us ut db ds dt
  read -r ub us ut < <(bulk "$bport" "$pid")
  read -r db ds dt < <(bulk "$bport" "$pid" -R)
  local up down per="-"
  up=$(awk -v b="$ub" -v s="$us" 'BEGIN { if (s > 0) printf "%.2f", b * 8 / s / 1e9; else print "fail" }')
  down=$(awk -v b="$db" -v s="$ds" 'BEGIN { if (s > 0) printf "%.2f", b * 8 / s / 1e9; else print "fail" }')
  # CPU seconds per GiB relayed, both directions together.
  [ -n "$pid" ] && per=$(awk -v b=$((ub + db)) -v c=$((ut + dt)) -v t="$tck" \
    'BEGIN { if (b > 0) printf "%.3f", c / t / (b / 2^30); else print "-" }')
  results+=("$round|$name|$rate|$p50|$p99|$cpu|$up|$down|$per|${errors:-none}")
}

# --- the proxies' configs -------------------------------------------------------
# affinity: tcp listeners, Maglev on the client address.
pool() { # name base_port
  echo "[[pools]]"
  echo "name = \"$1\""
  echo "algorithm = \"maglev\""
  echo "health_check = { type = \"tcp\", interval = \"5s\", timeout = \"1s\" }"
  echo "backends = ["
  for i in $(seq 1 "$BACKENDS"); do
    echo "  { name = \"b$i\", url = \"tcp://127.0.0.1:$(($2 + i))\" },"
  done
  echo "]"
}
{
  echo "[listener]"
  echo "drain_timeout = \"1s\""
  for l in "conns $PROXY_PORT" "bulk $BULK_PORT"; do
    read -r pname port <<<"$l"
    echo "[[listeners]]"
    echo "name = \"$pname\""
    echo "address = \"127.0.0.1:$port\""
    echo "protocol = \"tcp\""
    echo "pool = \"$pname\""
    echo "idle_timeout = \"60s\""
  done
  pool conns "$BASE_PORT"
  pool bulk "$BULK_BASE_PORT"
} > "$work/affinity.toml"
"$affinity" --check -c "$work/affinity.toml" >/dev/null

# HAProxy: mode tcp, balance source, consistent hashing, no logs. maxconn
# 8000 fits a 20000 file limit (HAProxy wants two per connection).
{
  echo "global"
  echo "  nbthread 2"
  echo "  maxconn 8000"
  echo "defaults"
  echo "  mode tcp"
  echo "  maxconn 8000"
  echo "  timeout connect 1s"
  echo "  timeout client 60s"
  echo "  timeout server 60s"
  for l in "conns $PROXY_PORT $BASE_PORT" "bulk $BULK_PORT $BULK_BASE_PORT"; do
    read -r pname port base <<<"$l"
    echo "frontend $pname"
    echo "  bind 127.0.0.1:$port"
    echo "  default_backend $pname"
    echo "backend $pname"
    echo "  balance source"
    echo "  hash-type consistent"
    for i in $(seq 1 "$BACKENDS"); do
      echo "  server b$i 127.0.0.1:$((base + i)) check inter 5s"
    done
  done
} > "$work/haproxy.cfg"
haproxy -c -q -f "$work/haproxy.cfg"

# nginx stream: hash $remote_addr consistent, no access log.
nginx_stream=""
if [ -f "$STREAM_MODULE" ]; then
  nginx_stream=1
  {
    echo "load_module $STREAM_MODULE;"
    echo "worker_processes 2; daemon off; pid $work/lb.pid; error_log $work/lb.err;"
    echo "events { worker_connections 8000; }"
    echo "stream {"
    for l in "conns $PROXY_PORT $BASE_PORT" "bulk $BULK_PORT $BULK_BASE_PORT"; do
      read -r pname port base <<<"$l"
      echo "  upstream $pname { hash \$remote_addr consistent;"
      for i in $(seq 1 "$BACKENDS"); do
        echo "    server 127.0.0.1:$((base + i));"
      done
      echo "  }"
      echo "  server { listen 127.0.0.1:$port; proxy_pass $pname; proxy_connect_timeout 1s; proxy_timeout 60s; }"
    done
    echo "}"
  } > "$work/lb.conf"
else
  echo "tcp.sh: no $STREAM_MODULE (apt-get install libnginx-mod-stream): nginx skipped" >&2
fi

# Runs one proxy (name, then its command), measures it, stops it.
run_proxy() {
  local name=$1 pid
  shift
  "$@" 2>"$work/$name.err" &
  pid=$!
  pids+=($pid)
  measure "$name" "$PROXY_PORT" "$BULK_PORT" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# --- the runs: direct (the ceiling), then each proxy in turn, ROUNDS times ------
round=1
measure direct $((BASE_PORT + 1)) $((BULK_BASE_PORT + 1))
for round in $(seq 1 "$ROUNDS"); do
  run_proxy affinity env RUST_LOG=warn "$affinity" -c "$work/affinity.toml"
  run_proxy haproxy haproxy -db -f "$work/haproxy.cfg"
  # nginx's workers do the work: proc_ticks counts the master's children.
  if [ -n "$nginx_stream" ]; then run_proxy nginx nginx -c "$work/lb.conf" -e "$work/lb.err"; fi
done

# --- report ---------------------------------------------------------------------
echo
echo "$CONNS connections, $THREADS wrk threads, $DURATION; iperf3 1 stream, ${BULK_SECONDS}s each way;" \
  "$(nproc) cores; tcp_tw_reuse=$(cat /proc/sys/net/ipv4/tcp_tw_reuse)," \
  "ports $(tr '\t' '-' </proc/sys/net/ipv4/ip_local_port_range); load before: $load"
fmt='%-9s %9s %9s %9s %16s %10s %10s %10s  %s\n'
# shellcheck disable=SC2059
printf "$fmt" target "conn/s" p50 p99 "CPU us/conn u+s" "up Gbit/s" "dn Gbit/s" "CPU s/GiB" errors
for r in "${results[@]}"; do
  IFS='|' read -r _ name rate p50 p99 cpu up down per errors <<<"$r"
  # shellcheck disable=SC2059
  printf "$fmt" "$name" "$rate" "$p50" "$p99" "$cpu" "$up" "$down" "$per" "$errors"
done
# Each row over the HAProxy row of its round (direct: of the first).
echo
printf '%-9s %9s %16s %10s %10s %10s\n' "/ haproxy" "conn/s" "CPU/conn" up down "CPU/GiB"
for r in "${results[@]}"; do
  IFS='|' read -r rnd name rate _ _ cpu up down per _ <<<"$r"
  h=$(printf '%s\n' "${results[@]}" | awk -F'|' -v r="$rnd" '$1 == r && $2 == "haproxy"')
  [ -n "$h" ] || continue
  IFS='|' read -r _ _ hrate _ _ hcpu hup hdown hper _ <<<"$h"
  awk -v n="$name" -v r="$rate" -v hr="$hrate" -v c="$cpu" -v hc="$hcpu" -v u="$up" -v hu="$hup" \
    -v d="$down" -v hd="$hdown" -v p="$per" -v hp="$hper" '
    function sum(x, a) { split(x, a, "+"); return a[1] + a[2] }
    function ratio(a, b) { return (a + 0 > 0 && b + 0 > 0) ? sprintf("%.2fx", a / b) : "-" }
    BEGIN {
      cr = (c == "-") ? "-" : ratio(sum(c), sum(hc))
      printf "%-9s %9s %16s %10s %10s %10s\n", n, ratio(r, hr), cr, ratio(u, hu), ratio(d, hd), ratio(p, hp)
    }'
done
