#!/usr/bin/env bash
# Where the heap of idle keep-alive client connections goes, by owner.
#
# Builds affinity with `--features dhat-heap` (release, with line tables so
# inlined frames are named), starts two nginx backends and the proxy, opens
# N keep-alive connections (one request each, as bench/idle.py does), keeps
# them idle, then sends SIGTERM: the proxy writes dhat-heap.json before it
# drains, so its "at t-end" bytes are what was live with the N connections
# open. Prints the table of bench/idle_heap.py (live bytes per connection by
# owner) and leaves the profile in $OUT (view it whole at
# https://nnethercote.github.io/dh_view/dh_view.html).
#
#     bench/idle_heap.sh [N] [OUT_DIR]
#
# (AFFINITY_BIN=path: use that binary, built with the feature, instead of
# building; the build is a 5-minute LTO link.)
#
# N defaults to 5000 (each connection costs the proxy two file descriptors
# while its request is forwarded: stay under half the fd limit). Ports:
# 19501-19502 (nginx), 19680 (the proxy). Needs nginx and python3.
# dhat's allocator is the system malloc, so the proxy's RSS here is not the
# release build's: measure that with bench/idle.py on a normal build.
set -euo pipefail

N=${1:-5000}
OUT=${2:-$(mktemp -d /tmp/idle-heap.XXXXXX)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$OUT"

# AFFINITY_BIN: a binary built so already (skips the build).
BIN=${AFFINITY_BIN:-}
if [ -z "$BIN" ]; then
    CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=none \
        cargo build --release --features dhat-heap --manifest-path "$ROOT/Cargo.toml" >&2
    BIN=$TARGET/release/affinity
fi

cat > "$OUT/backends.conf" <<EOF
worker_processes 1; daemon off; pid $OUT/nginx.pid; error_log $OUT/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:19501; location / { return 200 "b1\n"; } }
  server { listen 127.0.0.1:19502; location / { return 200 "b2\n"; } } }
EOF
cat > "$OUT/idle.toml" <<EOF
[listener]
address = "127.0.0.1:19680"
[limits]
header_timeout = "300s"
max_connections = 50000
[balancer]
algorithm = "maglev"
key = "url"
[health_check]
interval = "5s"
[[backends]]
name = "b1"
url = "http://127.0.0.1:19501"
[[backends]]
name = "b2"
url = "http://127.0.0.1:19502"
EOF

NGINX_PID= PROXY_PID=
cleanup() {
    [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

nginx -c "$OUT/backends.conf" &
NGINX_PID=$!
# In $OUT, where dhat writes dhat-heap.json.
(cd "$OUT" && exec "$BIN" -c "$OUT/idle.toml" 2> "$OUT/affinity.log") &
PROXY_PID=$!
for _ in $(seq 100); do
    grep -q listening "$OUT/affinity.log" 2>/dev/null && break
    sleep 0.1
done
sleep 1

python3 - "$PROXY_PID" 19680 "$N" "$OUT/affinity.log" <<'EOF'
import asyncio, os, signal, sys
PID, PORT, N, LOG = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
REQUEST = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"

def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

async def open_one(i):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", PORT, local_addr=(f"127.0.0.{1 + i % 8}", 0))
    writer.write(REQUEST)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n")
                   if l.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return writer

async def main():
    before = rss_kib()
    conns = []
    for start in range(0, N, 500):
        conns += await asyncio.gather(*(open_one(i) for i in range(start, min(N, start + 500))))
    await asyncio.sleep(2)
    idle = rss_kib()
    print(f"rss (system malloc under dhat): {before / 1024:.1f} -> {idle / 1024:.1f} MiB "
          f"with {len(conns)} idle connections ({(idle - before) / len(conns):.1f} KiB each)",
          file=sys.stderr)
    # The profile is written at SIGTERM, before the drain closes them.
    os.kill(PID, signal.SIGTERM)
    for _ in range(1200):
        await asyncio.sleep(0.1)
        with open(LOG) as f:
            if "dhat: The data has been saved" in f.read():
                break
    else:
        print("no profile written within 2 minutes", file=sys.stderr)
    for writer in conns:
        writer.close()

asyncio.run(main())
EOF
wait "$PROXY_PID" || true
PROXY_PID=
echo "profile: $OUT/dhat-heap.json" >&2
python3 "$ROOT/bench/idle_heap.py" "$OUT/dhat-heap.json" "$N"
