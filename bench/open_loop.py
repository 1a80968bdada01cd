"""Open-loop load: requests sent at a fixed rate whatever the answers, latency measured from the
moment each request was due (so time spent queued in a busy server counts, which closed-loop
load such as wrk's hides: a slow answer there only delays the next request).

A request that finds every connection busy waits for one, and that wait counts too. Run in its own
process (python -m bench.open_loop URL RATE SECONDS BODY_FILE); prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import numpy as np
import uvloop

CONNECTIONS = 64


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Reads one HTTP/1.1 response (Content-Length framed): its status, and whether the server
    closes the connection after it (driver-ranker recycles keep-alive connections)."""
    head = await reader.readuntil(b"\r\n\r\n")
    headers = dict(line.partition(b":")[::2] for line in head.split(b"\r\n")[1:] if line)
    headers = {name.strip().lower(): value.strip().lower() for name, value in headers.items()}
    await reader.readexactly(int(headers.get(b"content-length", 0)))
    return int(head[9:12]), headers.get(b"connection") == b"close"


async def run(url: str, rate: float, seconds: float, body: bytes) -> dict:
    parts = urlsplit(url)
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(await asyncio.open_connection(parts.hostname, parts.port))
    latencies: list[float] = []
    errors: Counter[str] = Counter()  # status (or "transport") -> count, for answers other than 200
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05

    async def one(due: float) -> None:
        connection = await idle.get()
        reader, writer = connection
        try:
            writer.write(request)
            status, closing = await _answer(reader)
            if status != 200:
                errors[str(status)] += 1
        except (OSError, asyncio.IncompleteReadError):
            errors["transport"] += 1
            closing = True
        if closing:
            writer.close()
            connection = await asyncio.open_connection(parts.hostname, parts.port)
        latencies.append(time.perf_counter() - due)
        idle.put_nowait(connection)

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {
        "rate": rate,
        "achieved_rps": len(latencies) / elapsed,
        "errors": dict(errors),
        **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99, 99.9)},
    }


def main() -> None:
    url, rate, seconds, body_file = sys.argv[1:5]
    with open(body_file, "rb") as body:
        result = uvloop.run(run(url, float(rate), float(seconds), body.read()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
