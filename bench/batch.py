"""Batch scoring throughput and peak memory (`make bench` runs it after the HTTP loads).

Each run is `driver_ranker.jobs.batch.run` in a fresh process, so its peak RSS is its own: 1M rows on
the configured offline store (DuckDB); 500k rows on it, to show how the peak follows the input at
a fixed chunk size; and 100k rows on it and on Feast's `file` (Dask) offline store, side by side, to show what
the offline store costs. Only feature_store.yaml differs between the last two.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.jobs.batch import run
from driver_ranker.jobs.data import generate_requests
from driver_ranker.ops.bootstrap import prepare

OUT = PROJECT_ROOT / "artifacts" / "bench"


def _score(settings: Settings, source: Path) -> dict:
    """Runs in its own process: the batch job on `source`."""
    report = run(settings, source, source.with_name(f"scores-{source.name}"), progress=False)
    return {
        "rows": report.rows,
        "seconds": round(report.seconds, 2),
        "rows_per_s": round(report.rows_per_s),
        "peak_rss_mb": round(report.peak_rss_mb),
    }


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
        runs = {}
        spawn = multiprocessing.get_context("spawn")
        for name, run_settings, n in (
            ("duckdb", settings, rows),
            ("duckdb", settings, rows // 2),
            ("duckdb", settings, compare_rows),
            ("file_dask", on_file, compare_rows),
        ):
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                runs[f"{name}_{n}"] = pool.submit(_score, run_settings, sources[n]).result()
            print(f"batch {name}_{n}: {runs[f'{name}_{n}']}", flush=True)
    duckdb, file = runs[f"duckdb_{compare_rows}"], runs[f"file_dask_{compare_rows}"]
    return {
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
        f"| batch run (chunks of {results['chunk_rows']:,} rows) | rows | seconds | rows/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"| {name} | {r['rows']:,} | {r['seconds']} | {r['rows_per_s']:,} | {r['peak_rss_mb']:,} |"
        )
    lines.append(
        f"\npeak RSS at 2x the rows: {results['peak_rss_ratio_rows_x2']}x; DuckDB vs file (Dask) offline "
        f"store: {results['duckdb_vs_file_rows_per_s']}x the rows/s, {results['duckdb_vs_file_peak_rss']}x "
        "the peak RSS"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    settings = prepare(get_settings().model_copy(update={"demo_data": True}))  # the bench runs on demo data
    results = batch_bench(settings, args.rows)
    (OUT / "batch.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
