"""The Spark variant of the Feast repo (OFFLINE_STORE=spark, Spark in local mode) against the DuckDB
one, on the session's data and champion: materialization writes the same online values, training's
point-in-time join gives the same rows, and batch scoring the same scores and best drivers.

One Spark session serves the whole module (Feast starts it on first use), stopped at its end."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driver_ranker.config import Settings
from driver_ranker.features.store import FEATURE_SERVICE, apply, materialize, open_store
from driver_ranker.jobs.batch import run
from driver_ranker.jobs.data import FIRST_DRIVER_ID, ORDERS_FILE, STATS_FILE, generate_requests
from driver_ranker.jobs.training import training_frame
from tests.support.stack import copy_feature_repo, repo_settings, teardown_repo, use_definitions_of

pytest.importorskip("pyspark", reason="the `spark` extra: pip install -r requirements-spark.lock")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java 17 or 21 on PATH", allow_module_level=True)

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]


@dataclass(frozen=True)
class Twins:
    """Two copies of the session's repo and data, each in a Feast project of its own, applied and
    materialized: one on DuckDB, one on Spark. Both score with the session's champion."""

    duckdb: Settings
    spark: Settings


def _applied(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Applies and materializes the repo as `make features` does, with the environment its
    definitions read (driver_repo.py picks its kind of source by OFFLINE_STORE)."""
    monkeypatch.setenv("OFFLINE_STORE", settings.offline_store)
    use_definitions_of(settings.feast_repo_path, monkeypatch)
    materialize(apply(settings))
    return settings


@pytest.fixture(scope="module")
def twins(feast_settings, champion, tmp_path_factory) -> Iterator[Twins]:
    data = feast_settings.feast_repo_path / "data"
    mlflow_dir = feast_settings.mlflow_artifact_root.parent  # the session's registry and champion
    made = []
    try:
        for store in ("duckdb", "spark"):
            repo = copy_feature_repo(tmp_path_factory.mktemp(f"twin-{store}"), data)
            settings = repo_settings(repo, mlflow_dir=mlflow_dir, offline_store=store)
            made.append(settings)
            with pytest.MonkeyPatch.context() as monkeypatch:
                _applied(settings, monkeypatch)
        yield Twins(*made)
    finally:
        for settings in made:
            teardown_repo(settings)
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        if session is not None:
            session.stop()


def test_the_spark_repo_reads_a_spark_source_over_the_same_files(twins):
    spark_store, duck_store = open_store(twins.spark), open_store(twins.duckdb)
    (spark_view,), (duck_view,) = spark_store.list_feature_views(), duck_store.list_feature_views()
    assert type(spark_view.batch_source).__name__ == "SparkSource"
    assert type(duck_store.config.offline_store).__name__ == "DuckDBOfflineStoreConfig"
    assert Path(spark_view.batch_source.path) == twins.spark.feast_repo_path / "data" / STATS_FILE
    assert spark_store.config.offline_store.spark_conf["spark.master"] == "local[*]"
    assert type(spark_store.config.batch_engine).__name__ == "SparkComputeEngineConfig"
    # One definition of the views: only the source differs.
    assert spark_view.features == duck_view.features and spark_view.ttl == duck_view.ttl


def test_materialization_on_spark_puts_online_what_duckdb_puts(twins):
    drivers = [{"driver_id": d} for d in range(FIRST_DRIVER_ID, FIRST_DRIVER_ID + 1001)]  # 1 unknown
    online = {}
    for name, settings in (("duckdb", twins.duckdb), ("spark", twins.spark)):
        store = open_store(settings)
        online[name] = store.get_online_features(
            features=store.get_feature_service(FEATURE_SERVICE), entity_rows=drivers
        ).to_dict(include_event_timestamps=True)
    assert online["spark"] == online["duckdb"]
    assert online["spark"]["conv_rate"][-1] is None  # the unknown driver
    assert sum(v is not None for v in online["spark"]["conv_rate"]) == 1000


def test_training_join_on_spark_equals_duckdb(twins):
    orders = pd.read_parquet(twins.duckdb.feast_repo_path / "data" / ORDERS_FILE)
    spark_rows, spark_features = training_frame(open_store(twins.spark), orders)
    duck_rows, duck_features = training_frame(open_store(twins.duckdb), orders)

    assert spark_features == duck_features == FEATURES
    assert len(spark_rows) == len(orders)
    key = ["event_timestamp", "driver_id", "trip_completed"]
    spark_rows = spark_rows.sort_values(key, ignore_index=True)
    duck_rows = duck_rows.sort_values(key, ignore_index=True)[spark_rows.columns]
    # Spark gives nanosecond times, DuckDB microsecond ones: the same instants.
    pd.testing.assert_frame_equal(spark_rows, duck_rows, check_dtype=False)
    assert spark_rows[FEATURES].dtypes.tolist() == duck_rows[FEATURES].dtypes.tolist()


def _requests(data: Path) -> pd.DataFrame:
    """Requests of every point-in-time case: at any time of the data, before the first statistics,
    on the hour (a statistic as old as the request counts), past the ttl after the last hour,
    unknown drivers, and a driver listed twice in a request."""
    stats = pd.read_parquet(data / STATS_FILE, columns=["event_timestamp"])
    requests = generate_requests(data, 1_200, days=16)  # the data covers 14 days: 2 before it
    last = requests.request_id.iloc[-1]
    on_hour = requests.request_id.isin(requests.request_id.unique()[:20])
    requests.loc[on_hour, "event_timestamp"] = requests.loc[on_hour, "event_timestamp"].dt.floor("h")
    late = requests.request_id.isin(requests.request_id.unique()[20:30])
    requests.loc[late, "event_timestamp"] = stats.event_timestamp.max() + timedelta(days=2, minutes=1)
    twice = requests[requests.request_id == last].head(1)
    return pd.concat([requests, twice], ignore_index=True)


def test_batch_on_spark_writes_what_duckdb_writes(twins, stats_expected, tmp_path):
    source = tmp_path / "requests.parquet"
    requests = _requests(twins.duckdb.feast_repo_path / "data")
    requests.to_parquet(source, index=False)
    reports = {}
    for name, settings in (("duckdb", twins.duckdb), ("spark", twins.spark)):
        # Chunks of 500 rows: three joins, and requests that straddle two chunks.
        chunked = settings.model_copy(update={"batch_chunk_rows": 500})
        reports[name] = run(chunked, source, tmp_path / name / "scores.parquet", progress=False)

    spark, duck = reports["spark"], reports["duckdb"]
    assert (spark.rows, spark.requests, spark.rows_without_features) == (
        duck.rows,
        duck.requests,
        duck.rows_without_features,
    )
    scores = pd.read_parquet(spark.scores_path)
    pd.testing.assert_frame_equal(scores, pd.read_parquet(duck.scores_path))  # exact, every column
    best = pd.read_parquet(spark.best_path)
    pd.testing.assert_frame_equal(best, pd.read_parquet(duck.best_path))

    # And the point-in-time values themselves, computed here without Feast.
    expected = stats_expected(requests)
    assert np.array_equal(scores[FEATURES].to_numpy(), expected[FEATURES].to_numpy(), equal_nan=True)
    assert scores.has_features.tolist() == expected[FEATURES].notna().all(axis=1).tolist()
    assert scores.has_features.mean() > 0.7 and (~scores.has_features).sum() >= 50  # every case met
    assert best.best_driver_id.notna().sum() > 0 and best.best_driver_id.isna().sum() > 0


@pytest.fixture(scope="module")
def stats_expected(twins):
    """Each request's statistics as of its time with pandas: the last hour at or before it, within
    the view's 2-day ttl; NaN otherwise."""
    stats = pd.read_parquet(twins.duckdb.feast_repo_path / "data" / STATS_FILE)
    stats = stats.sort_values("event_timestamp")
    ttl = open_store(twins.duckdb).get_feature_view("driver_stats").ttl

    def expected(requests: pd.DataFrame) -> pd.DataFrame:
        left = requests.assign(_row=np.arange(len(requests)))
        left["event_timestamp"] = left["event_timestamp"].astype(stats.event_timestamp.dtype)
        joined = pd.merge_asof(
            left.sort_values("event_timestamp"),
            stats,
            on="event_timestamp",
            by="driver_id",
            direction="backward",
            tolerance=pd.Timedelta(ttl),
        )
        return joined.sort_values("_row", ignore_index=True).astype({f: "float64" for f in FEATURES})

    return expected
