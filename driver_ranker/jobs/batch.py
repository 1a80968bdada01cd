"""Batch scoring: requests from a file, point-in-time features from Feast's offline store, the same
model and feature order as the online service, scores to Parquet.

`python -m driver_ranker.jobs.batch INPUT OUTPUT` (`make batch`, `driver-ranker-batch`) reads CSV or
Parquet rows of (request_id, driver_id, event_timestamp) in chunks, joins each chunk to the model's
feature service as of each row's time through the offline store OFFLINE_STORE picks (DuckDB, or Spark),
scores it with the champion (or `--version N`) and writes two Parquet files: every row with its
score, and the best driver of each request. Neither appears unless the whole input was scored.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureStore
from tqdm import tqdm

from driver_ranker.config import Settings, get_settings
from driver_ranker.errors import BadBatchInput, DependencyUnavailable, MissingFeatures, ModelUnavailable
from driver_ranker.features.layout import service_features
from driver_ranker.features.online import JOIN_KEY
from driver_ranker.features.store import historical_features, open_store
from driver_ranker.model.registry import LoadedModel, load_alias, load_numbered, resolve_feature_service
from driver_ranker.model.scoring import Scorer

REQUEST_COLUMNS = ("request_id", JOIN_KEY, "event_timestamp")
_ROW = "_row"  # position in the input: the order of the output, and who wins a tie
_KEY = "_key"  # number of a distinct (driver_id, event_timestamp) within a chunk


@dataclass(frozen=True)
class BatchModel:
    """What scores a batch: the loaded version, its compiled scorer and its feature service."""

    model: LoadedModel
    score: Scorer
    service: FeatureService

    @classmethod
    def load(cls, settings: Settings, store: FeatureStore, version: str | None = None) -> BatchModel:
        """The champion (or version `version`), checked against the feature service as online."""
        model = load_numbered(settings, version) if version else load_alias(settings)
        model = resolve_feature_service(model, store, settings.default_feature_service)
        service_features(store, model.feature_service, model.feature_names)  # raises MissingFeatures
        score, _ = model.scorer()
        return cls(model, score, store.get_feature_service(model.feature_service))


@dataclass(frozen=True)
class BatchReport:
    rows: int
    requests: int
    rows_without_features: int
    seconds: float
    peak_rss_mb: float
    model: str
    scores_path: Path
    best_path: Path
    offline_store: str = "duckdb"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def _whose_memory(self) -> str:
        return " (Python only: Spark's JVM not counted)" if self.offline_store == "spark" else ""

    def __str__(self) -> str:
        return (
            f"scored {self.rows:,} rows ({self.requests:,} requests, {self.rows_without_features:,} rows "
            f"without features) with {self.model} in {self.seconds:.1f} s: {self.rows_per_s:,.0f} rows/s, "
            f"peak memory {self.peak_rss_mb:,.0f} MB{self._whose_memory}\n  scores: {self.scores_path}\n"
            f"  best:   {self.best_path}"
        )


def best_path_for(scores_path: Path) -> Path:
    """Where the best driver per request goes: `scores.parquet` -> `scores.best.parquet`."""
    return scores_path.with_name(f"{scores_path.stem}.best.parquet")


def _read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The input's request columns, `chunk_rows` at a time (CSV cells as text)."""
    if not path.is_file():
        raise BadBatchInput(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise BadBatchInput(f"{path} is empty: expected columns {', '.join(REQUEST_COLUMNS)}")
    if path.suffix.lower() == ".parquet":
        try:
            file = pq.ParquetFile(path)
        except pa.ArrowException as exc:
            raise BadBatchInput(f"{path} is not a Parquet file: {exc}") from None
        _require_columns(file.schema_arrow.names, path)
        for batch in file.iter_batches(batch_size=chunk_rows, columns=list(REQUEST_COLUMNS)):
            yield batch.to_pandas()
    elif path.name.lower().endswith((".csv", ".csv.gz")):
        try:
            _require_columns(pd.read_csv(path, nrows=0).columns, path)
        except pd.errors.EmptyDataError:
            raise BadBatchInput(f"{path} is empty: expected columns {', '.join(REQUEST_COLUMNS)}") from None
        yield from pd.read_csv(path, usecols=list(REQUEST_COLUMNS), dtype=str, chunksize=chunk_rows)
    else:
        raise BadBatchInput(f"{path}: expected a .csv, .csv.gz or .parquet file")


def _require_columns(columns: Iterable[str], path: Path) -> None:
    columns = list(columns)
    missing = [c for c in REQUEST_COLUMNS if c not in columns]
    if missing:
        raise BadBatchInput(f"{path} has no column {', '.join(map(repr, missing))} (it has {columns})")


def _place(path: Path, row: int) -> str:
    """Where a data row (counted from 1) is in the file, as its owner would look for it."""
    line = f" (line {row + 1})" if path.suffix.lower() != ".parquet" else ""  # the header is line 1
    return f"{path.name} row {row}{line}"


def parse_requests(chunk: pd.DataFrame, first_row: int, path: Path) -> pd.DataFrame:
    """Typed requests (request_id text, driver_id int64, event_timestamp UTC). Raises BadBatchInput
    naming the first bad row, `first_row` being the chunk's first; naive times are taken as UTC."""

    def fail(mask: pd.Series, column: str, problem: str) -> None:
        """Raises for the first row of `mask`; `{!r}` in `problem` shows that row's value."""
        i = int(np.argmax(mask.to_numpy()))
        raise BadBatchInput(
            f"{_place(path, first_row + i)}: {column} {problem.format(chunk[column].iloc[i])}"
        )

    for column in REQUEST_COLUMNS:
        if chunk[column].isna().any():
            fail(chunk[column].isna(), column, "is empty")
    driver_id = pd.to_numeric(chunk[JOIN_KEY], errors="coerce")
    bad = driver_id.isna() | (driver_id % 1 != 0) | (driver_id.abs() >= 2**63)
    if bad.any():
        fail(bad, JOIN_KEY, "{!r} is not an integer")
    raw_time = chunk["event_timestamp"]
    if pd.api.types.is_numeric_dtype(raw_time):
        fail(raw_time.notna(), "event_timestamp", "{!r} is a number: expected ISO 8601 text or a timestamp")
    if pd.api.types.is_datetime64_any_dtype(raw_time):
        at = pd.to_datetime(raw_time, utc=True)
    else:
        at = pd.to_datetime(raw_time, utc=True, errors="coerce", format="ISO8601")
        if at.isna().any():
            fail(at.isna(), "event_timestamp", "{!r} is not an ISO 8601 timestamp")
    return pd.DataFrame(
        {
            "request_id": chunk["request_id"].astype(str),
            JOIN_KEY: driver_id.astype(np.int64),
            "event_timestamp": at,
        }
    )


def read_requests(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Parsed chunks of the input, each with `_row`, its position in the file (from 0)."""
    row = 0
    for chunk in _read_chunks(path, chunk_rows):
        requests = parse_requests(chunk.reset_index(drop=True), row + 1, path)
        requests[_ROW] = np.arange(row, row + len(requests), dtype=np.int64)
        row += len(requests)
        yield requests
    if row == 0:
        raise BadBatchInput(f"{path} holds no requests, only a header")


def score_requests(store: FeatureStore, batch: BatchModel, requests: pd.DataFrame) -> pd.DataFrame:
    """Requests with the model's features as of each row's time, `has_features` and `score`.

    `score` is missing where a driver has no value of some feature at that time (unknown, or all
    statistics older than the feature view's ttl); online, such a driver is left out of the ranking.
    """
    features = list(batch.model.feature_names)
    # Each (driver, time) once: offline stores may collapse repeated entity rows (Dask's does),
    # and a driver listed twice at one time needs its features once.
    key = requests.groupby([JOIN_KEY, "event_timestamp"], sort=False).ngroup().to_numpy()
    first = ~pd.Series(key).duplicated().to_numpy()
    entities = requests.loc[first, [JOIN_KEY, "event_timestamp"]].assign(**{_KEY: key[first]})
    joined = historical_features(store, entities, batch.service)
    if len(joined) != len(entities):
        raise RuntimeError(f"the offline join returned {len(joined)} rows for {len(entities)}")
    joined = joined.sort_values(_KEY, ignore_index=True)  # row i is key i
    # float64 in model input order, as the online reader builds its matrix.
    values = joined[features].to_numpy(np.float64)[key]
    has_features = ~np.isnan(values).any(axis=1)
    score = np.full(len(requests), np.nan)
    if has_features.any():
        score[has_features] = batch.score(values[has_features])
    scored = requests.reset_index(drop=True).assign(**dict(zip(features, values.T, strict=True)))
    return scored.assign(has_features=has_features, score=score)


class BestPerRequest:
    """The best driver of each request over all chunks, in memory bounded by the requests seen.

    As online: the highest score wins, a tie goes to the driver listed first, and drivers without
    features never win (a request with none of them has no best driver).
    """

    def __init__(self) -> None:
        self._best = pd.DataFrame()

    def add(self, scored: pd.DataFrame) -> None:
        rows = scored[["request_id", JOIN_KEY, "score", _ROW, "has_features"]].assign(
            drivers=1, first_row=scored[_ROW]
        )
        self._best = self._reduce(pd.concat([self._best, rows], ignore_index=True))

    @staticmethod
    def _reduce(rows: pd.DataFrame) -> pd.DataFrame:
        ordered = rows.sort_values(["request_id", "score", _ROW], ascending=[True, False, True])
        groups = ordered.groupby("request_id", sort=False)
        best = groups.head(1).set_index("request_id")
        best["drivers"] = groups["drivers"].sum()
        best["has_features"] = groups["has_features"].sum()
        best["first_row"] = groups["first_row"].min()
        return best.reset_index()

    def frame(self, model: LoadedModel) -> pd.DataFrame:
        best = self._best.sort_values("first_row", ignore_index=True)
        return pd.DataFrame(
            {
                "request_id": best["request_id"],
                "best_driver_id": best[JOIN_KEY].where(best["score"].notna()).astype("Int64"),
                "score": best["score"],
                "drivers": best["drivers"].astype(np.int64),
                "drivers_with_features": best["has_features"].astype(np.int64),
                "model_name": model.name,
                "model_version": model.version,
            }
        )


def _output_table(scored: pd.DataFrame, model: LoadedModel, schema: pa.Schema | None) -> pa.Table:
    out = scored.drop(columns=[_ROW]).assign(model_name=model.name, model_version=model.version)
    return pa.Table.from_pandas(out, schema=schema, preserve_index=False)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(
    settings: Settings,
    input_path: Path,
    output_path: Path,
    version: str | None = None,
    progress: bool = True,
) -> BatchReport:
    """Scores `input_path` into `output_path` and its `.best.parquet` sibling (both or neither).

    The input is read twice: once to check every row, so that a bad row fails in seconds and
    names itself, then to score it chunk by chunk.
    """
    started = time.perf_counter()
    chunk_rows = settings.batch_chunk_rows
    total = sum(len(chunk) for chunk in read_requests(input_path, chunk_rows))
    store = open_store(settings)
    batch = BatchModel.load(settings, store, version)
    model = batch.model
    best_path = best_path_for(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    scores_tmp, best_tmp = _temporary(output_path), _temporary(best_path)
    best = BestPerRequest()
    writer: pq.ParquetWriter | None = None
    try:
        with tqdm(total=total, unit="rows", unit_scale=True, disable=not progress, file=sys.stderr) as bar:
            for requests in read_requests(input_path, chunk_rows):
                scored = score_requests(store, batch, requests)
                table = _output_table(scored, model, writer.schema if writer else None)
                writer = writer or pq.ParquetWriter(scores_tmp, table.schema)
                writer.write_table(table)
                best.add(scored)
                bar.update(len(requests))
        writer.close()
        writer = None
        per_request = best.frame(model)
        per_request.to_parquet(best_tmp, index=False)
        scores_tmp.replace(output_path)
        best_tmp.replace(best_path)
    finally:
        if writer is not None:
            writer.close()
        for leftover in (scores_tmp, best_tmp):
            leftover.unlink(missing_ok=True)
    return BatchReport(
        rows=total,
        requests=len(per_request),
        rows_without_features=int((per_request.drivers - per_request.drivers_with_features).sum()),
        seconds=time.perf_counter() - started,
        peak_rss_mb=_peak_rss_mb(),
        model=f"{model.name} v{model.version}",
        scores_path=output_path,
        best_path=best_path,
        offline_store=settings.offline_store,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Score a file of requests with point-in-time features from Feast's offline store "
        "and the champion (or --version)."
    )
    parser.add_argument("input", type=Path, help="CSV (.csv, .csv.gz) or Parquet file of requests")
    parser.add_argument(
        "output", type=Path, help="Parquet file of scores; the best per request goes beside it"
    )
    parser.add_argument("--version", help="model version to score with (default: the champion alias)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Feast's dependencies warn about their own deprecations once per chunk.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        report = run(get_settings(), args.input, args.output, args.version, progress=not args.no_progress)
    except (BadBatchInput, ModelUnavailable, MissingFeatures, DependencyUnavailable) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(report)


if __name__ == "__main__":
    main()
