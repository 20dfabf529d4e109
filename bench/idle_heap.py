#!/usr/bin/env python3
"""The heap live at the end of a dhat profile, by owner, per connection.

Reads the dhat-heap.json that `affinity` built with `--features dhat-heap`
writes (see bench/idle_heap.sh: at SIGTERM, while the idle connections are
still open, so "at t-end" is what they hold) and prints, for each owner,
the live bytes and blocks, divided by N (the idle connections), with:

* owner: the first frame inside hyper, hyper-util, h2, tokio, affinity or
  mimalloc (outermost first frames from alloc/core/std/bytes/... skipped),
  generics and hash stripped;
* side: client (a frame of affinity::listener or hyper::server), backend
  (affinity::proxy::upstream, affinity::pool::probe or hyper::client), or
  startup (anything else: config, Maglev tables, runtimes, logging: a fixed
  cost, which only looks per connection here because it is divided by N);
* mi: the bytes rounded up to mimalloc's size classes, the heap the
  release build (mimalloc) would hold for the same blocks.

    bench/idle_heap.py dhat-heap.json N [--frames K] [--min BYTES]

--frames K also prints the first K frames of each owner's biggest site.
"""
import argparse
import collections
import json
import re

OWN = ("hyper::", "hyper_util::", "h2::", "tokio::", "affinity::", "mimalloc::")
CLIENT = ("affinity::listener", "hyper::server", "affinity::proxy::framing")
FIXED = ("affinity::balance::",)
BACKEND = ("affinity::proxy::upstream", "affinity::pool::probe", "hyper::client")


def function(frame):
    """`0x…: path::to::fn (file:line:col)` → `path::to::fn`, no hash."""
    text = re.sub(r"^0x[0-9a-f]+: ", "", frame)
    text = re.sub(r" \(.*\)$", "", text)
    return re.sub(r"::h[0-9a-f]{16}$", "", text)


def owner(frames):
    for frame in frames:
        name = function(frame)
        bare = name.lstrip("<")
        if bare.startswith(OWN):
            # Generic parameters out, so every instance groups together.
            while True:
                shorter = re.sub(r"<[^<>]*>", "", name)
                if shorter == name:
                    break
                name = shorter
            return name
    return function(frames[0]) if frames else "?"


def side(frames):
    names = [function(f).lstrip("<") for f in frames]
    # Tables built once (or on a reload), whichever request first asked.
    if any(name.startswith(FIXED) for name in names):
        return "startup"
    # The innermost of the two markers decides: a backend connection's task
    # spawned from a client request's future is the backend's.
    for name in names:
        if name.startswith(BACKEND):
            return "backend"
        if name.startswith(CLIENT):
            return "client"
    return "startup"


def mimalloc_size(size):
    """mimalloc's block size for a request of `size` bytes (its bins:
    word-exact to 64 bytes, then four per doubling)."""
    words = max(1, (size + 7) // 8)
    if words <= 8:
        return words * 8
    if size > 128 * 1024:
        return (size + 4095) // 4096 * 4096
    w = words - 1
    b = w.bit_length() - 1
    step = 1 << (b - 2)
    return ((w // step) + 1) * step * 8


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("json")
    parser.add_argument("n", type=int)
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--min", type=float, default=8.0,
                        help="hide owners under this many bytes per connection")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    table = data["ftbl"]
    groups = collections.defaultdict(lambda: [0, 0, 0, None, 0])
    total = [0, 0, 0]
    for pp in data["pps"]:
        live, blocks = pp.get("eb", 0), pp.get("ebk", 0)
        if not live:
            continue
        frames = [table[i] for i in pp["fs"]]
        mi = blocks * mimalloc_size(live // blocks) if blocks else live
        g = groups[(side(frames), owner(frames))]
        g[0] += live
        g[1] += blocks
        g[2] += mi
        if live > g[4]:
            g[3], g[4] = frames, live
        total[0] += live
        total[1] += blocks
        total[2] += mi
    n = args.n
    print(f"live at t-end ({data.get('te', 0) / 1e6:.1f} s): {total[0]} bytes in "
          f"{total[1]} blocks; per connection (/{n}): {total[0] / n:.0f} bytes, "
          f"{total[1] / n:.1f} blocks, {total[2] / n:.0f} bytes in mimalloc's size classes")
    print(f"{'side':8} {'bytes/conn':>10} {'mi/conn':>8} {'blocks/conn':>11} {'avg block':>9}  owner")
    by_side = collections.Counter()
    hidden = [0, 0, 0]
    for (where, name), (live, blocks, mi, frames, _) in sorted(
            groups.items(), key=lambda kv: -kv[1][0]):
        by_side[where] += live
        if live / n < args.min:
            hidden[0] += live
            hidden[1] += blocks
            hidden[2] += mi
            continue
        print(f"{where:8} {live / n:10.1f} {mi / n:8.1f} {blocks / n:11.2f} "
              f"{live / blocks if blocks else 0:9.0f}  {name}")
        for frame in (frames or [])[: args.frames]:
            print(f"{'':42}  | {function(frame)[:150]}")
    print(f"{'(rest)':8} {hidden[0] / n:10.1f} {hidden[2] / n:8.1f} {hidden[1] / n:11.2f} "
          f"{'':9}  owners under {args.min:g} bytes/conn each")
    print("by side, bytes/conn: " + ", ".join(
        f"{k} {v / n:.0f}" for k, v in by_side.most_common()))


main()
