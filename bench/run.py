"""`make bench`: driver-ranker side by side with the course design and BentoML's ceiling.

The three services run at once on the same Redis, registry and number of workers; each load
(1, 5, 100 drivers; concurrency 1 and 16) is sent to each service in turn, from a separate process
(wrk, or an asyncio client where wrk is missing), over 5 rounds, each on fresh connections; a
cell's rounds run back to back, the services alternating. Medians over the rounds are reported,
with the ratios, the spread of throughput and of the ranker/ceiling ratio across rounds, and how
the connections were spread over the workers in each run (sampled with `ss`); a cell whose busier
worker held more than 60% of the connections in a round is flagged uneven. Also timed in-process:
the feature read (direct vs Feast's SDK, checked equal; and the direct read on a Redis Cluster of 3
masters on loopback), Redis's cost per read, the server-side time of one request, and the cold
start to /readyz. Last, batch scoring of 1M rows (bench/batch.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import psutil
import redis

from bench.batch import batch_bench
from bench.batch import table as batch_table
from bench.connections import SplitSampler
from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.features.online import FeastSdkReader, open_reader
from driver_ranker.features.store import open_store, redis_client
from driver_ranker.jobs.data import FIRST_DRIVER_ID, DataSpec
from driver_ranker.ops.bootstrap import prepare
from driver_ranker.ops.processes import free_port, serve_until_ready, stop_process_group
from driver_ranker.serving.ranker import Ranker
from driver_ranker.serving.schemas import InferenceRequest
from tests.support.stack import make_feast_repo, repo_settings
from tests.support.topologies import redis_cluster

OUT = PROJECT_ROOT / "artifacts" / "bench"
SERVICES = {
    "driver-ranker": "service:DriverRanker",
    "course": "bench.course_service:CourseRanker",
    "ceiling": "bench.ceiling_service:Ceiling",
}
SIZES = (1, 5, 100)
CONCURRENCY = (1, 16)
UNEVEN = 0.6
"""A run whose busier worker held more than this share of the connections is uneven."""


def body(size: int) -> dict:
    return {"request_id": "bench", "driver_ids": list(range(FIRST_DRIVER_ID, FIRST_DRIVER_ID + size))}


def start(target: str, env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    """Starts `bentoml serve target`; returns the process, its URL and seconds to /readyz."""
    port = free_port()
    started = time.monotonic()
    proc = serve_until_ready(target, port, env, OUT / f"{target.split(':')[1]}.log")
    return proc, f"http://127.0.0.1:{port}", time.monotonic() - started


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def load_wrk(url: str, size: int, concurrency: int, seconds: float) -> dict:
    script = OUT / f"post-{size}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = '{json.dumps(body(size))}'\n"
    )
    threads = min(2, concurrency)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
    ]
    out = subprocess.run([*command, f"{url}/inference"], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "errors": int(errors.group(1)) if errors else 0,
    }


def load_asyncio(url: str, size: int, concurrency: int, seconds: float) -> dict:
    """Closed-loop load from `concurrency` connections, for where wrk is not installed."""

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

            async def worker() -> None:
                nonlocal errors
                while time.monotonic() < deadline:
                    t = time.perf_counter()
                    response = await client.post("/inference", json=body(size))
                    latencies.append((time.perf_counter() - t) * 1e3)
                    errors += response.status_code != 200

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors

    latencies, errors = asyncio.run(run())
    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": errors,
    }


def in_process_timings(repeats: int) -> dict:
    """Feature read (direct vs SDK, checked equal) and server-side time of one request, in ms."""
    settings = get_settings()
    ranker = Ranker.start(settings)
    store = open_store(settings)
    counters_client = redis_client(store.config.online_store, 5.0)
    champion = ranker.manager.champion
    names, service = champion.model.feature_names, champion.model.feature_service
    readers = {
        "direct": champion.reader,  # the shipped path
        "feast_sdk": FeastSdkReader(store, service, names, 1.0),
    }

    async def median_ms(call, *args) -> float:
        await call(*args)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            await call(*args)
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    async def run() -> dict:
        result: dict = {"feature_read_ms": {}, "server_side_ms": {}, "redis_per_request": {}}
        for size in (5, 100):
            ids = [*body(size)["driver_ids"], 99999]
            a, b = await readers["direct"].read(ids), await readers["feast_sdk"].read(ids)
            identical = a.driver_ids == b.driver_ids and a.unknown_ids == b.unknown_ids
            identical = identical and np.array_equal(a.matrix, b.matrix)
            result["feature_read_ms"][size] = {
                kind: await median_ms(reader.read, ids) for kind, reader in readers.items()
            } | {"identical": bool(identical)}
            request = InferenceRequest(**body(size))
            result["server_side_ms"][size] = await median_ms(ranker.answer, request)
            result["redis_per_request"][size] = await redis_cost(
                counters_client, readers["direct"], ids, repeats
            )
        return result

    result = asyncio.run(run())
    result["cluster_read_ms"] = cluster_read_timings(settings, repeats)
    return result


async def redis_cost(client: redis.Redis, reader, ids: list[int], reads: int) -> dict:
    """Per direct read of `ids`, from Redis's own counters over `reads` reads (the benchmark is
    its only client then): round trips (script calls), HMGETs the script ran, Redis's time in the
    script (its socket I/O not included), bytes each way."""

    def counters() -> list[int]:
        stats, commands = client.info("stats"), client.info("commandstats")
        scripts = [commands.get(f"cmdstat_{name}", {}) for name in ("eval", "evalsha")]
        return [
            sum(script.get("calls", 0) for script in scripts),
            commands.get("cmdstat_hmget", {}).get("calls", 0),
            sum(script.get("usec", 0) for script in scripts),
            stats["total_net_input_bytes"],
            stats["total_net_output_bytes"],
        ]

    before = counters()
    for _ in range(reads):
        await reader.read(ids)
    per_read = [(after - then) / reads for after, then in zip(counters(), before, strict=True)]
    names = ("round_trips", "hmgets", "redis_script_us", "bytes_to_redis", "bytes_from_redis")
    return dict(zip(names, per_read, strict=True))


def redis_commands(client: redis.Redis) -> tuple[int, int]:
    """Redis's counts so far: script calls (each a round trip: a feature read, shared by the
    requests that arrived together, or a batch of the prediction log), and all commands (those
    the scripts run included)."""
    stats = client.info("commandstats")
    scripts = sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha"))
    commands = sum(v.get("calls", 0) for k, v in stats.items() if k not in ("cmdstat_info",))
    return scripts, commands


def open_loop(url: str, size: int, rate: float, seconds: float) -> dict:
    """bench/open_loop.py in its own process: `rate` requests/s of `size` drivers."""
    body_file = OUT / f"body-{size}.json"
    body_file.write_text(json.dumps(body(size)))
    command = [
        sys.executable,
        "-m",
        "bench.open_loop",
        f"{url}/inference",
        str(rate),
        str(seconds),
        str(body_file),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=PROJECT_ROOT).stdout
    return json.loads(out)


def worker_rss_mb(proc: subprocess.Popen) -> list[float]:
    """Resident memory of each of a server's worker processes (BentoML's `serve` has one child
    per worker), in MB."""
    return [p.memory_info().rss / 1e6 for p in psutil.Process(proc.pid).children()]


def cluster_read_timings(settings: Settings, repeats: int) -> dict:
    """The direct reader's feature read on a Redis Cluster of 3 masters (and 3 replicas) on
    loopback against the single Redis, same drivers, medians in ms; the cluster's read asks the
    masters together, one call each."""
    with tempfile.TemporaryDirectory() as folder, redis_cluster(Path(folder) / "cluster") as cluster:
        spec = DataSpec(n_drivers=200, days=2, n_orders=100)
        repo = make_feast_repo(Path(folder), spec, cluster.connection_string, redis_type="redis_cluster")
        cluster_settings = repo_settings(repo, cluster.connection_string, redis_type="redis_cluster")
        single = Ranker.start(settings).manager.champion.model
        reader = open_reader(open_store(cluster_settings), single.feature_service, single.feature_names, 1.0)

        async def run() -> dict:
            times: dict = {}
            for size in (5, 100):
                ids = body(size)["driver_ids"]
                assert len((await reader.read(ids)).driver_ids) == size
                samples = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    await reader.read(ids)
                    samples.append((time.perf_counter() - t) * 1e3)
                times[size] = statistics.median(samples)
            return times

        return asyncio.run(run())


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s} drv\nc={c}" for c in CONCURRENCY for s in SIZES]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, name in enumerate(SERVICES):
        rps = [results["load"][name][f"{s}x{c}"]["rps"] for c in CONCURRENCY for s in SIZES]
        ax.bar(x + (i - 1) * 0.27, rps, 0.27, label=name)
    ax.set_xticks(x, labels)
    ax.set_ylabel("requests / s (median of rounds)")
    ax.set_title(f"driver-ranker vs course design vs BentoML ceiling ({results['workers']} workers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summarize(rounds: list[dict]) -> dict:
    """Medians over rounds, the throughput's spread ((max - min) / median) and the worker split."""
    rps = [r["rps"] for r in rounds]
    shares = [r["busier_share"] for r in rounds if r.get("busier_share") is not None]
    medians = ("rps", "p50_ms", "p99_ms", "redis_scripts_per_request", "redis_commands_per_request")
    return {m: statistics.median(r[m] for r in rounds) for m in medians} | {
        "errors": sum(r["errors"] for r in rounds),
        "rps_spread": (max(rps) - min(rps)) / statistics.median(rps),
        "busier_share": statistics.median(shares) if shares else None,
        "uneven_rounds": sum(share > UNEVEN for share in shares),
    }


def balance_table(results: dict) -> str:
    """Per cell at concurrency > 1: throughput spread across rounds and how the workers shared the
    connections (busier worker's share, median over rounds; rounds over 60%), and the spread of
    the ranker/ceiling ratio over the rounds (each round's two runs are seconds apart)."""
    load = results["load"]
    lines = [
        "| drivers | conc. | "
        + " | ".join(f"{n}: spread, busier worker, uneven rounds" for n in SERVICES)
        + " | ranker/ceiling: spread |",
        "| ---: | ---: | " + " | ".join("---" for _ in SERVICES) + " | ---: |",
    ]
    for c in (c for c in CONCURRENCY if c > 1):
        for s in SIZES:
            cells = []
            for n in SERVICES:
                cell = load[n][f"{s}x{c}"]
                flag = " **uneven**" if cell["uneven_rounds"] else ""
                cells.append(
                    f"{cell['rps_spread']:.0%}, {cell['busier_share']:.0%}, "
                    f"{cell['uneven_rounds']}/{results['rounds']}{flag}"
                )
            key = f"{s}x{c}"
            pairs = zip(results["runs"]["driver-ranker"][key], results["runs"]["ceiling"][key], strict=True)
            ratios = [ranker["rps"] / ceiling["rps"] for ranker, ceiling in pairs]
            ratio_spread = (max(ratios) - min(ratios)) / statistics.median(ratios)
            lines.append(f"| {s} | {c} | {' | '.join(cells)} | {ratio_spread:.0%} |")
    return "\n".join(lines)


def open_loop_table(results: dict) -> str:
    """Latency under a fixed request rate (open loop), at half and 80% of each service's maximum."""
    lines = [
        "| drivers | load | service | rate req/s (achieved) | p50 / p90 / p99 / p99.9 ms | not 200 |",
        "| ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for key in results["open_loop"]["driver-ranker"]:
        size, share = key.split("@")
        for name, by_key in results["open_loop"].items():
            r = by_key[key]
            lines.append(
                f"| {size} | {share} | {name} | {r['rate']:,.0f} ({r['achieved_rps']:,.0f}) | "
                f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} / {r['p99_ms']:.1f} / {r['p99.9_ms']:.1f} | "
                f"{', '.join(f'{n} x {status}' for status, n in r['errors'].items()) or 0} |"
            )
    return "\n".join(lines)


def redis_table(results: dict) -> str:
    """Redis per request of driver-ranker under load: script calls (round trips) and commands."""
    lines = [
        "| drivers | conc. | script calls per request | Redis commands per request |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for key, cell in results["load"]["driver-ranker"].items():
        size, c = key.split("x")
        lines.append(
            f"| {size} | {c} | {cell['redis_scripts_per_request']:.2f} | {cell['redis_commands_per_request']:.1f} |"
        )
    return "\n".join(lines)


def table(results: dict) -> str:
    load = results["load"]
    lines = [
        "| drivers | conc. | driver-ranker req/s (p50 / p99 ms) | course req/s (p50 / p99) | ceiling req/s (p50 / p99) | ranker/course | ranker/ceiling |",
        "| ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for c in CONCURRENCY:
        for s in SIZES:
            key = f"{s}x{c}"
            cells = [
                f"{load[n][key]['rps']:.0f} ({load[n][key]['p50_ms']:.2f} / {load[n][key]['p99_ms']:.2f})"
                for n in SERVICES
            ]
            ranker, course, ceiling = (load[n][key]["rps"] for n in SERVICES)
            lines.append(
                f"| {s} | {c} | {' | '.join(cells)} | {ranker / course:.2f} | {ranker / ceiling:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=500, help="in-process timing repeats")
    parser.add_argument("--batch-rows", type=int, default=1_000_000, help="batch scoring rows (0: skip)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    settings = prepare(
        get_settings().model_copy(update={"demo_data": True})
    )  # the benchmark runs on demo data
    load = load_wrk if shutil.which("wrk") else load_asyncio
    env = os.environ | {"WORKERS": str(settings.workers), "PYTHONWARNINGS": "ignore"}

    timings = in_process_timings(args.repeats)
    procs, urls, cold = {}, {}, {}
    try:
        for name, target in SERVICES.items():
            procs[name], urls[name], cold[name] = start(target, env)
        reference = httpx.post(f"{urls['driver-ranker']}/inference", json=body(5)).json()
        course = httpx.post(f"{urls['course']}/inference", json=body(5)).json()
        assert reference["best_driver_id"] == course["best_driver_id"], (reference, course)

        runs: dict[str, dict[str, list[dict]]] = {n: {} for n in SERVICES}
        names = list(SERVICES)
        counters = redis_client(open_store(settings).config.online_store, 5.0)
        total, done = len(CONCURRENCY) * len(SIZES) * args.rounds * len(names), 0
        # Cell by cell, the services alternating round after round: the runs compared are minutes
        # apart at most, while this machine's speed drifts over tens of minutes.
        for c in CONCURRENCY:
            for s in SIZES:
                for round_ in range(args.rounds):
                    for name in names[round_ % 3 :] + names[: round_ % 3]:  # rotate who goes first
                        load(urls[name], s, c, 1.0)  # warm-up
                        port = int(urls[name].rsplit(":", 1)[1])
                        before = redis_commands(counters)
                        with SplitSampler(port, settings.workers) as split:  # wrk connects afresh each run
                            result = load(urls[name], s, c, args.seconds)
                        after = redis_commands(counters)
                        per_request = [
                            (a - b) / max(1, result["requests"]) for a, b in zip(after, before, strict=True)
                        ]
                        result |= {
                            "redis_scripts_per_request": per_request[0],
                            "redis_commands_per_request": per_request[1],
                        }
                        runs[name].setdefault(f"{s}x{c}", []).append(result | split.summary())
                        done += 1
                        print(
                            f"[{done}/{total}] {name}: {s} drivers, concurrency {c}, round {round_ + 1}: "
                            f"{result['rps']:,.0f} req/s, p99 {result['p99_ms']:.1f} ms",
                            flush=True,
                        )
        # Open loop at half and 80% of each service's own closed-loop maximum (concurrency 16).
        open_runs: dict[str, dict[str, dict]] = {n: {} for n in ("driver-ranker", "ceiling")}
        for s in (5, 100):
            for share in (0.5, 0.8):
                for name in open_runs:
                    peak = statistics.median(r["rps"] for r in runs[name][f"{s}x16"])
                    result = open_loop(urls[name], s, round(peak * share), args.seconds * 2)
                    open_runs[name][f"{s}@{share:.0%}"] = result
                    print(
                        f"open loop {name}: {s} drivers at {result['rate']:,.0f} req/s ({share:.0%} of its "
                        f"maximum): p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms",
                        flush=True,
                    )
        memory = {name: worker_rss_mb(proc) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop_process_group(proc)

    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "workers": settings.workers,
        "load_tool": load.__name__.removeprefix("load_"),
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "cold_start_s": cold,
        "worker_rss_mb": memory,
        "open_loop": open_runs,
        **timings,
        "load": {name: {key: summarize(rs) for key, rs in by_key.items()} for name, by_key in runs.items()},
        "runs": runs,
    }
    if args.batch_rows:
        results["batch"] = batch_bench(settings, args.batch_rows)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))
    chart(results, OUT / "throughput.png")
    markdown = "\n\n".join(
        (table(results), balance_table(results), open_loop_table(results), redis_table(results))
    )
    (OUT / "table.md").write_text(markdown + "\n")
    print(
        f"\n{results['date']} on {results['machine']}, {results['workers']} workers, {results['load_tool']}"
    )
    print(markdown)
    fr = timings["feature_read_ms"]
    for size in (5, 100):
        print(
            f"feature read {size} drivers: direct {fr[size]['direct']:.3f} ms, Feast SDK "
            f"{fr[size]['feast_sdk']:.3f} ms, identical={fr[size]['identical']}; "
            f"server-side request {timings['server_side_ms'][size]:.3f} ms; direct read on a Redis "
            f"Cluster of 3 masters {timings['cluster_read_ms'][size]:.3f} ms"
        )
        cost = timings["redis_per_request"][size]
        print(
            f"Redis per {size}-driver read: {cost['round_trips']:.2f} round trips, {cost['hmgets']:.0f} "
            f"HMGETs inside ({cost['redis_script_us']:.0f} us of Redis time), {cost['bytes_to_redis']:.0f} B sent, {cost['bytes_from_redis']:.0f} B received"
        )
    print("cold start to /readyz: " + ", ".join(f"{n} {s:.1f} s" for n, s in cold.items()))
    print(
        "worker memory (RSS after the load): "
        + ", ".join(f"{n} {', '.join(f'{mb:.0f}' for mb in rss)} MB" for n, rss in memory.items())
    )
    if args.batch_rows:
        print(batch_table(results["batch"]))
    print(f"wrote {OUT / 'results.json'} and {OUT / 'throughput.png'}")


if __name__ == "__main__":
    main()
