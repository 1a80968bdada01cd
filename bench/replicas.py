"""`make bench-replicas`: what HAProxy and replicas give on this machine, in one run.

Four setups run at once on the same Redis and registry, started as `make stack REPLICAS=n` starts
them (driver_ranker/ops/balancer.py): HAProxy to 1 replica of 1 worker, HAProxy to 2 replicas of 1
worker, 1 replica of 2 workers directly, and HAProxy to that same replica. Each gets the same load
(5 drivers; wrk -t2 -c16, or bench/run.py's asyncio client where wrk is missing) in turn, the order
rotated every round; medians over the rounds. How the load was shared is recorded too: between the
2 workers of a replica, the established connections per worker (bench/connections.py, sampled
with `ss`); between 2 replicas, the requests HAProxy sent each (its stats).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.connections import SplitSampler
from bench.run import OUT, load_asyncio, load_wrk, summarize
from driver_ranker.config import get_settings
from driver_ranker.ops.balancer import Balancer, Replicas, balanced_replicas
from driver_ranker.ops.bootstrap import prepare
from driver_ranker.ops.processes import free_port

DRIVERS = 5
CONCURRENCY = 16


@dataclass
class Setup:
    name: str
    url: str
    replicas: Replicas
    balancer: Balancer | None
    """None: the load goes to the replica itself."""
    workers: int


def answered_per_replica(balancer: Balancer) -> dict[str, int]:
    """The 2xx answers HAProxy has passed on from each replica."""
    return {
        row["svname"]: int(row["hrsp_2xx"] or 0) for row in balancer.stats() if row["svname"] != "BACKEND"
    }


def measure(setup: Setup, load, seconds: float) -> dict:
    """One run: a second's warm-up on fresh connections, then the measured load with its split."""
    load(setup.url, DRIVERS, CONCURRENCY, 1.0)
    result: dict = {}
    if setup.workers > 1:  # two workers of one replica: who holds HAProxy's (or wrk's) connections
        with SplitSampler(setup.replicas.members[0].port, setup.workers) as split:
            result = load(setup.url, DRIVERS, CONCURRENCY, seconds)
        result |= split.summary()
    elif len(setup.replicas.members) > 1 and setup.balancer is not None:
        before = answered_per_replica(setup.balancer)
        result = load(setup.url, DRIVERS, CONCURRENCY, seconds)
        after = answered_per_replica(setup.balancer)
        requests = sorted((after[name] - before.get(name, 0) for name in after), reverse=True)
        result |= {"replica_split": requests, "busier_share": requests[0] / max(1, sum(requests))}
    else:
        result = load(setup.url, DRIVERS, CONCURRENCY, seconds)
    return result


def split_cell(rounds: list[dict]) -> str:
    """How the load was shared, median over rounds: the busier worker's (or replica's) share, and
    the median round's split."""
    shares = [r["busier_share"] for r in rounds if r.get("busier_share") is not None]
    if not shares:
        return "one worker"
    middle = sorted(rounds, key=lambda r: r.get("busier_share") or 0)[len(rounds) // 2]
    if "replica_split" in middle:
        return f"requests per replica {'/'.join(map(str, middle['replica_split']))} (busier {statistics.median(shares):.0%})"
    return f"connections per worker {'/'.join(map(str, middle['split']))} (busier {statistics.median(shares):.0%})"


def table(results: dict) -> str:
    lines = [
        f"| setup (wrk -t2 -c{CONCURRENCY}, {DRIVERS} drivers) | req/s | p50 ms | p99 ms | spread | errors | load shared |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, cell in results["summary"].items():
        lines.append(
            f"| {name} | {cell['rps']:.0f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
            f"{cell['rps_spread']:.0%} | {cell['errors']} | {cell['shared']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    prepare(get_settings().model_copy(update={"demo_data": True}))  # the benchmark runs on demo data
    load = load_wrk if shutil.which("wrk") else load_asyncio
    env = os.environ | {"PYTHONWARNINGS": "ignore"}
    folder = OUT / "replicas"

    runs: dict[str, list[dict]] = {}
    with ExitStack() as stack:
        setups = []
        for name, count, workers in (
            ("HAProxy -> 1 replica x 1 worker", 1, 1),
            ("HAProxy -> 2 replicas x 1 worker", 2, 1),
            ("HAProxy -> 1 replica x 2 workers", 1, 2),
        ):
            replicas, balancer = stack.enter_context(
                balanced_replicas(count, env, folder / f"{count}x{workers}", free_port(), workers=workers)
            )
            setups.append(Setup(name, balancer.url, replicas, balancer, workers))
        two_workers = setups[-1].replicas
        setups.insert(
            2, Setup("direct -> 1 replica x 2 workers", two_workers.members[0].url, two_workers, None, 2)
        )
        for round_ in range(args.rounds):
            for setup in (
                setups[round_ % len(setups) :] + setups[: round_ % len(setups)]
            ):  # rotate who goes first
                runs.setdefault(setup.name, []).append(measure(setup, load, args.seconds))
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    summary = {name: summarize(rounds) | {"shared": split_cell(rounds)} for name, rounds in runs.items()}
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_tool": load.__name__.removeprefix("load_"),
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "summary": summary,
        "runs": runs,
    }
    (OUT / "replicas.json").write_text(json.dumps(results, indent=2))
    header = (
        f"{results['date']} on {results['machine']}, {results['load_tool']}, medians of {args.rounds} rounds "
        f"of {args.seconds:.0f} s (spread: (max - min) / median of req/s)"
    )
    markdown = header + "\n\n" + table(results)
    (OUT / "replicas.md").write_text(markdown + "\n")
    print("\n" + markdown)
    print(f"wrote {OUT / 'replicas.md'} and {OUT / 'replicas.json'}")


if __name__ == "__main__":
    main()
