# Shared by bench/peer.sh and bench/callgrind.sh (sourced, not run): the
# backends, the load and the proxies' configs, the same for every proxy.
#
# Expects BACKENDS, BASE_PORT and PROXY_PORT set and a scratch directory in
# `work`. What the scripts start goes into `pids`, stopped on exit; `work` is
# removed then unless KEEP is set.

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# $work/site.pem and $work/site.key: a self-signed ECDSA P-256 certificate
# for bench.example.com, for a TLS listener.
write_certificate() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$work/site.key" -out "$work/site.pem" -days 30 -subj "/CN=bench.example.com" \
    -addext "subjectAltName=DNS:bench.example.com" 2>/dev/null
}

# BIN: the affinity to measure: as given (e.g. target/pgo/release/affinity
# from bench/pgo.sh), or else this tree's release build, built now.
affinity_binary() {
  if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=target/release/affinity
  fi
}

# Waits until something listens on 127.0.0.1:$1 (up to 20 s).
wait_port() {
  for _ in $(seq 1 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "$(basename "$0"): nothing listens on port $1" >&2
  return 1
}

# CPU clock ticks (user, system) of process $1 and its children (nginx's
# workers).
proc_ticks() {
  local u=0 s=0 p a b
  for p in $1 $(ps -o pid= --ppid "$1"); do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}

# BACKENDS backends on BASE_PORT+1.., one nginx with a server per port, each
# answering every path with its own name.
start_backends() {
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
}

# The load, $work/urls.lua for wrk: random URLs, so that consistent hashing
# spreads them, the same sequence every run.
write_urls() {
  cat > "$work/urls.lua" <<'LUA'
math.randomseed(42)
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, 1000000))
end
LUA
}

# $work/affinity.toml: Maglev on the URL over the backends.
write_affinity_config() {
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
}

# $work/affinity-routes.toml: the same pool behind $1 routes that the
# benchmark's requests (Host 127.0.0.1, random paths) must search through:
# a third exact hosts, a third *.suffix hosts, a third path prefixes for
# any host (each a miss), and the catch-all that every request takes.
# ROUTE_KIND=0, 1 or 2 makes them all exact hosts, suffixes or prefixes.
write_affinity_routes_config() {
  local routes=$1 i
  {
    echo "[[listeners]]"
    echo "name = \"web\""
    echo "address = \"127.0.0.1:$PROXY_PORT\""
    for i in $(seq 1 $((routes - 1))); do
      echo "[[routes]]"
      case $(( ${ROUTE_KIND:-$((i % 3))} )) in
        0) echo "host = \"svc-$i.example.com\"" ;;
        1) echo "host = \"*.zone-$i.example.net\"" ;;
        2) echo "path_prefix = \"/service-$i/api\"" ;;
      esac
      echo "pool = \"main\""
    done
    echo "[[routes]]"
    echo "pool = \"main\""
    echo "[[pools]]"
    echo "name = \"main\""
    echo "algorithm = \"maglev\""
    echo "key = \"url\""
    echo "health_check = { interval = \"5s\" }"
    echo "backends = ["
    for i in $(seq 1 "$BACKENDS"); do
      echo "  { name = \"backend-$i\", url = \"http://127.0.0.1:$((BASE_PORT + i))\" },"
    done
    echo "]"
  } > "$work/affinity-routes.toml"
}

# $work/haproxy.cfg: `balance uri` with consistent hashing, 2 threads,
# backend connections reused.
write_haproxy_config() {
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
}

# $work/lb.conf: nginx as the load balancer, two workers, hashing the URL
# consistently over the same backends, with keep-alive to them.
write_nginx_config() {
  {
    echo "worker_processes 2; daemon off; pid $work/lb.pid; error_log $work/lb.err;"
    echo "events { worker_connections 4096; }"
    # keepalive_requests: nginx closes a client's connection after 1,000
    # requests by default, which h2load does not reopen.
    echo "http { access_log off; keepalive_requests 10000000;"
    echo "  upstream pool { hash \$request_uri consistent; keepalive 64;"
    for i in $(seq 1 "$BACKENDS"); do
      echo "    server 127.0.0.1:$((BASE_PORT + i));"
    done
    echo "  }"
    echo "  server { listen 127.0.0.1:$PROXY_PORT; location / { proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
    echo "}"
  } > "$work/lb.conf"
}
