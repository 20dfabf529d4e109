#!/usr/bin/env python3
"""RSS of a proxy holding many idle keep-alive client connections.

Opens N connections to the proxy (from 127.0.0.1..127.0.0.8 in turn), sends
one GET on each so that every connection has been fully served once, keeps
them all open and idle, and prints the proxy's RSS before, with them open,
and after they close. Then, for the soak, keeps a steady request loop on a
few connections for SOAK seconds and samples RSS every 10 s.

    bench/idle.py PID PORT [N] [SOAK_SECONDS]
"""
import asyncio
import sys
import time

PID, PORT = int(sys.argv[1]), int(sys.argv[2])
N = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
SOAK = int(sys.argv[4]) if len(sys.argv) > 4 else 0
REQUEST = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"


def rss_mib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return head


async def open_one(i):
    source = f"127.0.0.{1 + i % 8}"
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT, local_addr=(source, 0))
    writer.write(REQUEST)
    await writer.drain()
    head = await read_response(reader)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    return reader, writer


async def main():
    print(f"rss before: {rss_mib():.1f} MiB")
    conns = []
    batch = 500
    for start in range(0, N, batch):
        conns += await asyncio.gather(*(open_one(i) for i in range(start, min(N, start + batch))))
    await asyncio.sleep(2)
    print(f"rss with {len(conns)} idle keep-alive connections: {rss_mib():.1f} MiB")
    # Still alive and served?
    reader, writer = conns[-1]
    writer.write(REQUEST)
    await writer.drain()
    await read_response(reader)
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(2)
    print(f"rss after closing them: {rss_mib():.1f} MiB")
    if SOAK:
        clients = [await open_one(i) for i in range(16)]
        samples = []
        sent = 0
        end = time.time() + SOAK
        next_sample = time.time()

        async def loop(reader, writer):
            nonlocal sent
            while time.time() < end:
                writer.write(REQUEST)
                await writer.drain()
                await read_response(reader)
                sent += 1

        async def sampler():
            while time.time() < end:
                samples.append(rss_mib())
                await asyncio.sleep(10)

        await asyncio.gather(sampler(), *(loop(r, w) for r, w in clients))
        print(f"soak: {sent} requests over {SOAK} s; rss samples (MiB): "
              + " ".join(f"{s:.1f}" for s in samples))


asyncio.run(main())
