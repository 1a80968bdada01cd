"""Batch scoring throughput and peak memory (`make bench` runs it after the HTTP loads).

Each run is `driver_ranker.jobs.batch.run` in a fresh process, so its peak is its own: 1M rows on
the configured offline store (DuckDB); 500k rows on it, to show how the peak follows the input at
a fixed chunk size; 100k rows on it and on Feast's `file` (Dask) offline store, side by side, to show
what the offline store costs (only feature_store.yaml differs between the two); and, with the
`spark` extra installed, 100k and 1M rows on Spark in local mode (feature_store.spark.yaml), in
the same chunks. A run's time includes starting Spark; its peak memory is the process tree's
resident set (Spark's JVM is a child process), sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import psutil

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.features.store import apply
from driver_ranker.jobs.batch import run
from driver_ranker.jobs.data import generate_requests
from driver_ranker.ops.bootstrap import prepare

OUT = PROJECT_ROOT / "artifacts" / "bench"


SPAWN = multiprocessing.get_context("spawn")


def _score(settings: Settings, source: Path, result: Connection) -> None:
    """Runs in its own process: the batch job on `source`."""
    report = run(settings, source, source.with_name(f"scores-{source.name}"), progress=False)
    result.send(
        {
            "rows": report.rows,
            "seconds": round(report.seconds, 2),
            "rows_per_s": round(report.rows_per_s),
            "peak_rss_mb": round(report.peak_rss_mb),
        }
    )


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (a JVM that Spark started, say)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:  # ended between the listing and the reading
            continue
    return total


def _measured(settings: Settings, source: Path) -> dict:
    """`_score` in a fresh process, with the wall time of the whole process (imports included) and
    the peak resident memory of its process tree."""
    receive, send = SPAWN.Pipe(duplex=False)
    started = time.perf_counter()
    child = SPAWN.Process(target=_score, args=(settings, source, send))
    child.start()
    watched, peak = psutil.Process(child.pid), 0
    while child.is_alive() and not receive.poll():
        try:
            peak = max(peak, _tree_rss(watched))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    result = receive.recv() if receive.poll(timeout=5) else None
    child.join()
    if result is None:
        raise RuntimeError(f"the batch run on {source.name} failed (exit code {child.exitcode})")
    return result | {
        "process_s": round(time.perf_counter() - started, 2),
        "peak_tree_rss_mb": round(peak / 2**20),
    }


def _apply_spark_definitions(settings: Settings) -> None:
    """Runs in its own process, whose environment driver_repo.py reads: the definitions with a
    SparkSource, applied to the Spark repo's registry (sources unvalidated: no Spark needed)."""
    os.environ["OFFLINE_STORE"] = "spark"
    apply(settings, validate_sources=False)


def _repo_on_spark(settings: Settings, root: Path) -> Settings:
    """The feature repo, its data files linked, applied on feature_store.spark.yaml into a registry
    of its own under `root`."""
    repo = root / "feature_repo_spark"
    (repo / "data").mkdir(parents=True)
    for name in ("driver_repo.py", "feature_store.spark.yaml"):
        shutil.copy(settings.feast_repo_path / name, repo)
    for parquet in (settings.feast_repo_path / "data").glob("*.parquet"):
        (repo / "data" / parquet.name).symlink_to(parquet)
    on_spark = Settings(
        **(settings.model_dump() | {"feast_repo_path": repo, "offline_store": "spark"}), _env_file=None
    )
    child = SPAWN.Process(target=_apply_spark_definitions, args=(on_spark,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError("applying the Spark variant of the repo failed")
    return on_spark


def _repo_on_file_store(settings: Settings, root: Path) -> Path:
    """The feature repo with `offline_store: type: file` (Feast's Dask store), sharing its data."""
    repo = root / "feature_repo"
    repo.mkdir()
    shutil.copy(settings.feast_repo_path / "driver_repo.py", repo)
    (repo / "data").symlink_to(settings.feast_repo_path / "data")
    yaml = settings.feast_yaml.read_text().replace("type: duckdb", "type: file")
    (repo / settings.feast_yaml.name).write_text(yaml)
    return repo


def batch_bench(settings: Settings, rows: int = 1_000_000) -> dict:
    compare_rows = rows // 10
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        root = Path(tmp)
        requests = generate_requests(settings.feast_repo_path / "data", rows)
        sources = {n: root / f"requests-{n}.parquet" for n in (rows, rows // 2, compare_rows)}
        for n, path in sources.items():
            requests.head(n).to_parquet(path, index=False)
        del requests
        on_file = settings.model_copy(update={"feast_repo_path": _repo_on_file_store(settings, root)})
        plan = [
            ("duckdb", settings, rows),
            ("duckdb", settings, rows // 2),
            ("duckdb", settings, compare_rows),
            ("file_dask", on_file, compare_rows),
        ]
        if importlib.util.find_spec("pyspark") is not None:
            # In chunks, as DuckDB: 1M rows in one join ran out of heap in local mode (1 GB and 4 GB).
            on_spark = _repo_on_spark(settings, root)
            plan += [("spark", on_spark, compare_rows), ("spark", on_spark, rows)]
        else:
            print("batch: no Spark runs (pyspark is not installed: pip install -r requirements-spark.lock)")
        runs = {}
        for name, run_settings, n in plan:
            runs[f"{name}_{n}"] = _measured(run_settings, sources[n])
            print(f"batch {name}_{n}: {runs[f'{name}_{n}']}", flush=True)
    duckdb, file = runs[f"duckdb_{compare_rows}"], runs[f"file_dask_{compare_rows}"]
    spark = {
        f"spark_vs_duckdb_rows_per_s_{n}": round(
            runs[f"spark_{n}"]["rows_per_s"] / runs[f"duckdb_{n}"]["rows_per_s"], 2
        )
        for n in (compare_rows, rows)
        if f"spark_{n}" in runs
    }
    return spark | {
        "chunk_rows": settings.batch_chunk_rows,
        "runs": runs,
        # How the peak follows the input at a fixed chunk size (1.0 would be flat).
        "peak_rss_ratio_rows_x2": round(
            runs[f"duckdb_{rows}"]["peak_rss_mb"] / runs[f"duckdb_{rows // 2}"]["peak_rss_mb"], 2
        ),
        "duckdb_vs_file_rows_per_s": round(duckdb["rows_per_s"] / file["rows_per_s"], 2),
        "duckdb_vs_file_peak_rss": round(duckdb["peak_rss_mb"] / file["peak_rss_mb"], 2),
    }


def table(results: dict) -> str:
    lines = [
        f"| batch run (chunks of {results['chunk_rows']:,} rows) | rows | seconds | rows/s | process s "
        "| peak RSS MB | peak tree RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"| {name} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']:,} | {r['process_s']} "
            f"| {r['peak_rss_mb']:,} | {r['peak_tree_rss_mb']:,} |"
        )
    lines.append(
        f"\npeak RSS at 2x the rows: {results['peak_rss_ratio_rows_x2']}x; DuckDB vs file (Dask) offline "
        f"store: {results['duckdb_vs_file_rows_per_s']}x the rows/s, {results['duckdb_vs_file_peak_rss']}x "
        "the peak RSS"
    )
    for key, value in results.items():
        if key.startswith("spark_vs_duckdb"):
            lines.append(f"{key}: {value}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    # The bench runs on demo data, DuckDB's repo as the base (the Spark variant is made from it).
    settings = prepare(get_settings().model_copy(update={"demo_data": True, "offline_store": "duckdb"}))
    results = batch_bench(settings, args.rows)
    (OUT / "batch.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
