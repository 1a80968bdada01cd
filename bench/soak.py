"""`make soak`: minutes of mixed valid and invalid traffic at a steady rate against the shipped
service; reports requests, answers by kind and status, and worker memory at start and end.

Fails (exit 1) on any 5xx, any answer of the wrong class, or worker memory growth of 10% or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter

import httpx
import psutil

from bench.run import OUT, start
from driver_ranker.config import get_settings
from driver_ranker.ops.bootstrap import prepare
from driver_ranker.ops.processes import stop_process_group

# (kind, body, expected status); the mix repeats in this order.
TRAFFIC = [
    ("valid-5", {"driver_ids": [1001, 1002, 1003, 1004, 1005]}, 200),
    ("valid-5", {"request_id": "r", "driver_ids": [1500, 1501, 1502, 1503, 1504]}, 200),
    ("valid-100", {"driver_ids": list(range(1001, 1101))}, 200),
    ("unknown", {"driver_ids": [1, 2, 3]}, 200),
    ("valid-5", {"driver_ids": [1900, 1901, 1902, 1001, 1001]}, 200),
    ("not-json", b"{driver_ids: [1001", 400),
    ("empty", {"driver_ids": []}, 400),
    ("strings", {"driver_ids": ["a", "b"]}, 400),
    ("too-many", {"driver_ids": list(range(1001, 2002))}, 400),
    ("valid-5", {"driver_ids": [1200, 1201, 1202, 1203, 1204]}, 200),
]


def worker_rss_mb(server: psutil.Process) -> dict[int, float]:
    return {
        p.pid: p.memory_info().rss / 2**20
        for p in server.children(recursive=True)
        if "_bentoml_impl.worker.service" in " ".join(p.cmdline())
    }


async def drive(url: str, rate: float, seconds: float) -> Counter:
    outcomes: Counter = Counter()
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def one(i: int) -> None:
            kind, body, expected = TRAFFIC[i % len(TRAFFIC)]
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                response = await client.post(
                    "/inference", content=content, headers={"content-type": "application/json"}
                )
                status = response.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            outcomes[(kind, status, status == expected)] += 1

        tasks, started, i = [], time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            while i < due:
                tasks.append(asyncio.create_task(one(i)))
                i += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks)
    return outcomes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 5)))
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    settings = prepare(
        get_settings().model_copy(update={"demo_data": True})
    )  # the benchmark runs on demo data
    proc, url, _ = start("service:DriverRanker", os.environ | {"WORKERS": str(settings.workers)})
    try:
        server = psutil.Process(proc.pid)
        asyncio.run(drive(url, args.rate, 15))  # warm-up: caches, pools, lazy imports
        before = worker_rss_mb(server)
        outcomes = asyncio.run(drive(url, args.rate, args.minutes * 60))
        after = worker_rss_mb(server)
    finally:
        stop_process_group(proc)
    total = sum(outcomes.values())
    wrong = sum(n for (_, _, ok), n in outcomes.items() if not ok)
    growth = {pid: (after[pid] - before[pid]) / before[pid] * 100 for pid in before if pid in after}
    report = {
        "minutes": args.minutes,
        "rate": args.rate,
        "requests": total,
        "by_kind_and_status": {f"{k} {s}": n for (k, s, _), n in sorted(outcomes.items(), key=str)},
        "wrong_answers": wrong,
        "worker_rss_mb_start": before,
        "worker_rss_mb_end": after,
        "worker_rss_growth_pct": growth,
    }
    (OUT / "soak.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    ok = wrong == 0 and len(growth) == len(before) > 0 and max(growth.values()) < 10
    print("soak:", "PASS" if ok else "FAIL")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
