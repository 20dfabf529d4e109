#!/usr/bin/env python3
"""POSTs over one HTTP/2 prior-knowledge (h2c) connection with httpx, a client
nobody here wrote: it sends a request body's END_STREAM in a DATA frame of its
own, which a proxy that resets the stream once it has answered turns into
failed requests.

    pip install httpx h2
    bench/h2_posts.py PORT [REQUESTS] [CONCURRENT_STREAMS]

Prints how many requests failed and with what, and exits 1 if any did.
"""
import asyncio
import collections
import sys

import httpx

PORT = int(sys.argv[1])
REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 400
STREAMS = int(sys.argv[3]) if len(sys.argv) > 3 else 20


async def main():
    errors = collections.Counter()
    statuses = collections.Counter()
    limit = asyncio.Semaphore(STREAMS)
    # One connection: httpx multiplexes every request on it as a stream.
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(http1=False, http2=True, limits=limits) as client:

        async def post(i):
            async with limit:
                try:
                    response = await client.post(
                        f"http://127.0.0.1:{PORT}/upload", content=b"x" * (100 + i % 50)
                    )
                    statuses[response.status_code] += 1
                except Exception as error:  # every failure counts, whatever its type
                    errors[type(error).__name__] += 1

        await asyncio.gather(*(post(i) for i in range(REQUESTS)))
    failed = sum(errors.values())
    print(f"{REQUESTS} POSTs, {STREAMS} concurrent streams on one h2c connection: "
          f"{failed} failed {dict(errors)}, statuses {dict(statuses)}")
    return 1 if failed else 0


sys.exit(asyncio.run(main()))
