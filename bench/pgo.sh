#!/usr/bin/env bash
# A profile-guided release build of affinity: the compiler lays out and
# inlines the code by what a real load runs, not by guesses.
#
# Builds affinity instrumented and trains it in front of BACKENDS nginx
# backends (consistent hashing on the URL, as bench/peer.sh): wrk over
# HTTP/1.1 keep-alive for DURATION, which is what the profile should weigh
# most, then shorter runs of each other path a deployment takes, so that
# none of them is compiled as cold code: HTTP/2 over cleartext (h2load), TLS
# with HTTP/2 and HTTP/1.1 and new handshakes (h2load), and a TCP listener
# (wrk through it). It then stops the proxy (SIGTERM: the profile is
# written at exit), merges the profile and builds again with it. The binary
# is left in $PGO_TARGET/release/affinity (default
# target/pgo/release/affinity); `cargo build --release` and target/release
# are not touched.
#
#   bench/pgo.sh
#   DURATION=30s bench/pgo.sh
#   BIN=target/pgo/release/affinity bench/peer.sh     # measure it
#
# Needs llvm-profdata of the same LLVM major version as rustc (`rustc -vV`
# names it): rustup's llvm-tools component, or the distribution's llvm-N
# package (apt-get install llvm-22), or LLVM_PROFDATA=/path/to/llvm-profdata.
# And wrk, nginx, h2load (nghttp2-client) and openssl. Everything listens
# on 127.0.0.1 only and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
CONNS=${CONNS:-64}
BACKENDS=${BACKENDS:-8}
BASE_PORT=${BASE_PORT:-19300}
PROXY_PORT=${PROXY_PORT:-19380}
PGO_TARGET=${PGO_TARGET:-target/pgo}
case $PGO_TARGET in /*) ;; *) PGO_TARGET=$PWD/$PGO_TARGET ;; esac

llvm=$(rustc -vV | awk '/^LLVM version/ {split($3, v, "."); print v[1]}')
profdata=${LLVM_PROFDATA:-}
if [ -z "$profdata" ]; then
  for candidate in \
    "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host/ {print $2}')/bin/llvm-profdata" \
    "llvm-profdata-$llvm" "/usr/lib/llvm-$llvm/bin/llvm-profdata"; do
    if command -v "$candidate" >/dev/null 2>&1; then profdata=$candidate; break; fi
  done
fi
if [ -z "$profdata" ]; then
  echo "pgo.sh: no llvm-profdata for LLVM $llvm (rustup component add llvm-tools, or apt-get install llvm-$llvm, or set LLVM_PROFDATA)" >&2
  exit 1
fi
for tool in wrk nginx h2load openssl; do
  command -v "$tool" >/dev/null || { echo "pgo.sh: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d)
. bench/common.sh
profiles="$PGO_TARGET/profiles"
rm -rf "$profiles"
mkdir -p "$profiles"

echo "pgo.sh: building instrumented (LLVM $llvm, $profdata)"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$profiles" \
  cargo build --release --quiet --target-dir "$PGO_TARGET/generate"

start_backends
write_urls
write_certificate
http=$PROXY_PORT tls=$((PROXY_PORT + 1)) tcp=$((PROXY_PORT + 2))
{
  for listener in "http $http main" "tls $tls main" "tcp $tcp relay"; do
    read -r name port pool <<<"$listener"
    echo "[[listeners]]"
    echo "name = \"$name\""
    echo "address = \"127.0.0.1:$port\""
    echo "pool = \"$pool\""
    case $name in
      tls) echo "tls.certificates = [{ cert = \"$work/site.pem\", key = \"$work/site.key\" }]" ;;
      tcp) echo "protocol = \"tcp\"" ;;
    esac
  done
  # main: HTTP, keyed on the URL; relay: TCP, keyed on the client address.
  for pool in "main http" "relay tcp"; do
    read -r name scheme <<<"$pool"
    echo "[[pools]]"
    echo "name = \"$name\""
    echo "algorithm = \"maglev\""
    [ "$name" = main ] && echo "key = \"url\""
    echo "backends = ["
    for i in $(seq 1 "$BACKENDS"); do
      echo "  { name = \"backend-$i\", url = \"$scheme://127.0.0.1:$((BASE_PORT + i))\" },"
    done
    echo "]"
  done
} > "$work/train.toml"
"$PGO_TARGET/generate/release/affinity" --check -c "$work/train.toml" >/dev/null
RUST_LOG=warn "$PGO_TARGET/generate/release/affinity" -c "$work/train.toml" 2>"$work/affinity.err" &
pid=$!
pids+=($pid)
for port in $http $tls $tcp; do wait_port "$port"; done
# Each step prints its tally, and a failed one stops the build: a profile
# of errors would teach the compiler the wrong paths.
step() { # what command...
  local what=$1 out
  shift
  out=$("$@" 2>&1) || { echo "pgo.sh: $what failed:" >&2; echo "$out" >&2; exit 1; }
  # wrk's non-2xx answers and socket errors; h2load's failed and errored
  # requests.
  if grep -qE "Non-2xx|Socket errors" <<<"$out" ||
    grep -E "^requests:" <<<"$out" | grep -qvE " 0 failed, 0 errored"; then
    echo "pgo.sh: $what had errors:" >&2; echo "$out" >&2; exit 1
  fi
  echo "  $what: $(grep -E "^requests:|Requests/sec" <<<"$out" | head -1)"
}
echo "pgo.sh: training"
urls() { # scheme port
  for i in 1 2 3 4 5 6 7 8; do echo "$1://127.0.0.1:$2/item/$i"; done
}
step "HTTP/1.1, wrk -c$CONNS -d$DURATION" \
  wrk -t2 -c"$CONNS" -d"$DURATION" -s "$work/urls.lua" "http://127.0.0.1:$http/"
step "HTTP/2 cleartext" h2load -n 20000 -c 8 -m 8 $(urls http "$http")
step "TLS, HTTP/2" h2load -n 10000 -c 8 -m 8 $(urls https "$tls")
step "TLS, HTTP/1.1" h2load --h1 -n 10000 -c 8 $(urls https "$tls")
step "TLS, new handshakes" h2load --h1 -n 1000 -c 500 $(urls https "$tls")
step "TCP, wrk -c$CONNS -d3s" \
  wrk -t2 -c"$CONNS" -d3s -s "$work/urls.lua" "http://127.0.0.1:$tcp/"
kill -TERM "$pid"
wait "$pid" || true
ls "$profiles"/*.profraw >/dev/null 2>&1 || { echo "pgo.sh: no profile was written" >&2; exit 1; }

"$profdata" merge -o "$PGO_TARGET/affinity.profdata" "$profiles"/*.profraw
echo "pgo.sh: building with the profile"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PGO_TARGET/affinity.profdata" \
  cargo build --release --quiet --target-dir "$PGO_TARGET"
echo "pgo.sh: $PGO_TARGET/release/affinity"
