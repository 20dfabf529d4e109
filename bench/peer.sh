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
# It also prints where the CPU went, per request: the proxy's user and system
# time (from /proc/PID/stat, its nginx workers included) and the whole
# machine's busy time (from /proc/stat: wrk and the backends share the
# cores). These vary far less from run to run than requests/s. From
# HAProxy's figures it prints the most any proxy could reach here: one that
# spent HAProxy's system time and no user time at all.
#
#   bench/peer.sh                          # defaults: 8 backends, 64 conns, 10s
#   DURATION=30s CONNS=64 bench/peer.sh
#   ROUTES=50 bench/peer.sh                # also affinity behind 50 routes
#   BIN=path/to/affinity bench/peer.sh     # that binary instead of this tree's build
#   PGO_BIN=target/pgo/release/affinity bench/peer.sh   # and bench/pgo.sh's build
#
# With ROUTES=N, affinity runs a second time with the same pool behind N
# routes that every request searches (exact hosts, *.suffix hosts and path
# prefixes that miss, then the catch-all): the cost of choosing a route.
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

work=$(mktemp -d)
. bench/common.sh
affinity_binary
start_backends
write_urls

# The whole machine's busy ticks (all cores; idle, I/O wait and time
# stolen by the hypervisor left out).
machine_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat; }

results=()
run_wrk() { # name port [pid]: pid's RSS and CPU are reported
  local name=$1 port=$2 pid=${3:-}
  wait_port "$port"
  wrk -t"$THREADS" -c"$CONNS" -d1s -s "$work/urls.lua" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  local out rss="-" u1=0 s1=0 u2=0 s2=0 busy1 busy2
  [ -n "$pid" ] && read -r u1 s1 < <(proc_ticks "$pid")
  busy1=$(machine_ticks)
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$work/urls.lua" "http://127.0.0.1:$port/")
  busy2=$(machine_ticks)
  if [ -n "$pid" ]; then
    read -r u2 s2 < <(proc_ticks "$pid")
    rss=$(ps -o rss= --ppid "$pid" -p "$pid" | awk '{s+=$1} END {printf "%.1f", s/1024}')
  fi
  local rps p50 p99 errors requests cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  # µs per request: proxy user, proxy system, machine busy (all cores).
  cpu=$(awk -v n="$requests" -v t="$(getconf CLK_TCK)" -v u=$((u2 - u1)) -v s=$((s2 - s1)) \
    -v b=$((busy2 - busy1)) 'BEGIN { f = 1e6 / t / n; printf "%.1f|%.1f|%.1f", u * f, s * f, b * f }')
  results+=("$name|$rps|$p50|$p99|$rss|$cpu|${errors:-none}")
}

# --- direct: the ceiling --------------------------------------------------------
run_wrk direct $((BASE_PORT + 1))

# --- affinity -------------------------------------------------------------------
run_affinity() { # name config [binary]
  RUST_LOG=warn "${3:-$BIN}" -c "$2" 2>"$work/$1.err" &
  local pid=$!
  pids+=($pid)
  run_wrk "$1" "$PROXY_PORT" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
write_affinity_config
if [ "${ROUTES:-0}" -gt 1 ]; then
  # One route against ROUTES routes, in the order A B B A, so that a drift
  # of the machine during the run weighs on both alike.
  write_affinity_routes_config "$ROUTES"
  "$BIN" --check -c "$work/affinity-routes.toml" >/dev/null
  run_affinity affinity "$work/affinity.toml"
  run_affinity "aff-${ROUTES}r" "$work/affinity-routes.toml"
  run_affinity "aff-${ROUTES}r" "$work/affinity-routes.toml"
  run_affinity affinity "$work/affinity.toml"
else
  run_affinity affinity "$work/affinity.toml"
fi
# PGO_BIN: a profile-guided build (bench/pgo.sh) measured in the same run.
if [ -n "${PGO_BIN:-}" ]; then
  run_affinity aff-pgo "$work/affinity.toml" "$PGO_BIN"
fi

# --- HAProxy: balance uri, consistent hashing -----------------------------------
if command -v haproxy >/dev/null; then
  write_haproxy_config
  haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.err" &
  hpid=$!
  pids+=($hpid)
  run_wrk haproxy "$PROXY_PORT" "$hpid"
  kill "$hpid"; wait "$hpid" 2>/dev/null || true
fi

# --- nginx: hash $request_uri consistent ----------------------------------------
write_nginx_config
nginx -c "$work/lb.conf" -e "$work/lb.err" &
npid=$!
pids+=($npid)
sleep 0.3
# nginx's workers hold the memory and do the work: run_wrk counts the
# master's children with it.
run_wrk nginx "$PROXY_PORT" "$npid"
kill "$npid"; wait "$npid" 2>/dev/null || true

# --- report ---------------------------------------------------------------------
echo
echo "$BACKENDS backends, URL key, $CONNS connections, $THREADS wrk threads, $DURATION, $(nproc) cores"
printf '%-10s %12s %10s %10s %8s %22s %12s  %s\n' target "requests/s" p50 p99 "RSS MiB" \
  "proxy CPU us/req u+s" "machine us" errors
haproxy=""
for r in "${results[@]}"; do
  IFS='|' read -r name rps p50 p99 rss user sys busy errors <<<"$r"
  proxy="-"
  [ "$rss" != "-" ] && proxy="$user + $sys"
  printf '%-10s %12s %10s %10s %8s %22s %12s  %s\n' "$name" "$rps" "$p50" "$p99" "$rss" "$proxy" "$busy" "$errors"
  [ "$name" = haproxy ] && haproxy=$r
done
if [ "${ROUTES:-0}" -gt 1 ]; then
  printf '%s\n' "${results[@]}" | awk -F'|' -v r="aff-${ROUTES}r" '
    $1 == "affinity" { a += $2; au += $6; an++ }
    $1 == r { b += $2; bu += $6; bn++ }
    END { printf "\n%s / affinity (means of two runs each): requests/s %.3f, proxy user CPU per request %+.2f us\n", r, (b / bn) / (a / an), bu / bn - au / an }'
fi
if [ -n "$haproxy" ]; then
  IFS='|' read -r _ hrps _ _ _ huser _ hbusy _ <<<"$haproxy"
  echo
  for r in "${results[@]}"; do
    IFS='|' read -r name rps _ <<<"$r"
    awk -v n="$name" -v a="$rps" -v h="$hrps" 'BEGIN { printf "%-10s %.2fx HAProxy\n", n, a / h }'
  done
  # The machine is saturated: requests/s goes as 1 / (machine µs per
  # request). A proxy with HAProxy's system time and no user time would cut
  # HAProxy's user time out of that.
  awk -v u="$huser" -v b="$hbusy" 'BEGIN {
    if (b <= u) exit
    printf "bound      %.2fx HAProxy: a proxy with HAProxy'"'"'s system time and no user time (%.1f of %.1f us/req)\n", b / (b - u), u, b
    printf "           1.10x HAProxy takes a user time of at most %.1f us/req (HAProxy: %.1f)\n", u - (b - b / 1.1), u
  }'
fi
