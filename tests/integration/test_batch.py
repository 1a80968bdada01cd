"""Batch scoring against the session's Feast repo (DuckDB offline store, real Redis online) and
MLflow registry: it must agree with the online service, join point-in-time, and refuse bad input
without leaving a file behind."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

import driver_ranker.jobs.batch as batch
from driver_ranker.errors import BadBatchInput, ModelUnavailable
from driver_ranker.jobs.batch import best_path_for, run
from driver_ranker.jobs.data import FIRST_DRIVER_ID, STATS_FILE
from driver_ranker.model.registry import connect
from tests.support.stack import settings_env

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
UNKNOWN = 99_999


@pytest.fixture(scope="module")
def settings(feast_settings, champion):
    """Chunks of 7 rows, so that every test crosses chunk (and request) boundaries."""
    return feast_settings.model_copy(update={"batch_chunk_rows": 7})


@pytest.fixture(scope="module")
def stats(feast_settings) -> pd.DataFrame:
    return pd.read_parquet(feast_settings.feast_repo_path / "data" / STATS_FILE)


def written(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_batch_agrees_with_the_online_service(client, settings, stats, tmp_path):
    # Half an hour after the last statistics hour: the values that materialization put online.
    at = (stats.event_timestamp.max() + timedelta(minutes=30)).isoformat()
    rng = np.random.default_rng(3)
    requests = {
        f"req-{i}": [int(d) for d in rng.choice(np.arange(FIRST_DRIVER_ID, FIRST_DRIVER_ID + 1000), 6, False)]
        for i in range(5)
    }
    requests["req-2"].insert(2, UNKNOWN)
    requests["req-3"].append(requests["req-3"][0])  # listed twice: the same features, the same score
    requests["only-unknown"] = [UNKNOWN, UNKNOWN + 1]
    rows = [(rid, d, at) for rid, ids in requests.items() for d in ids]
    source = tmp_path / "requests.csv"
    pd.DataFrame(rows, columns=["request_id", "driver_id", "event_timestamp"]).to_csv(source, index=False)

    report = run(settings, source, tmp_path / "scores.parquet", progress=False)

    assert (report.rows, report.requests, report.rows_without_features) == (len(rows), len(requests), 3)
    scores = pd.read_parquet(report.scores_path)
    best = pd.read_parquet(report.best_path).set_index("request_id")
    assert scores.driver_id.tolist() == [d for _, d, _ in rows]  # input order kept
    for request_id, ids in requests.items():
        online = client.post("/inference", json={"request_id": request_id, "driver_ids": ids}).json()
        mine = scores[scores.request_id == request_id]
        assert mine[~mine.has_features].driver_id.tolist() == online["unknown_driver_ids"]
        expected = {s["driver_id"]: s["score"] for s in online["scores"]}
        got = dict(zip(mine.driver_id[mine.has_features], mine.score[mine.has_features], strict=True))
        assert got == pytest.approx(expected, rel=1e-12, abs=0)
        assert pd.isna(best.loc[request_id, "best_driver_id"]) == (online["best_driver_id"] is None)
        if online["best_driver_id"] is not None:
            assert best.loc[request_id, "best_driver_id"] == online["best_driver_id"]
        assert best.loc[request_id, "model_version"] == online["model"]["version"]
        assert (best.loc[request_id, "drivers"], best.loc[request_id, "drivers_with_features"]) == (
            len(ids),
            sum(d in expected for d in ids),
        )
    assert written(tmp_path) == ["requests.csv", "scores.best.parquet", "scores.parquet"]


def test_an_earlier_request_is_scored_with_the_statistics_of_its_time(settings, champion, stats, tmp_path):
    driver = FIRST_DRIVER_ID + 7
    history = stats[stats.driver_id == driver].sort_values("event_timestamp", ignore_index=True)
    then, latest = history.iloc[len(history) // 2], history.iloc[-1]
    assert then.conv_rate != latest.conv_rate
    before_any = history.event_timestamp.min() - timedelta(hours=1)
    requests = pd.DataFrame(
        {
            "request_id": ["then", "then", "latest", "too-early"],
            "driver_id": [driver, UNKNOWN, driver, driver],
            # Naive times are UTC; 20 minutes past an hour sees that hour's statistics.
            "event_timestamp": [
                (then.event_timestamp + timedelta(minutes=20)).tz_localize(None),
                then.event_timestamp.tz_localize(None),
                (latest.event_timestamp + timedelta(hours=1)).tz_localize(None),
                before_any.tz_localize(None),
            ],
        }
    )
    source = tmp_path / "requests.parquet"
    requests.to_parquet(source)

    report = run(settings, source, tmp_path / "out" / "scores.parquet", progress=False)

    scores = pd.read_parquet(report.scores_path)
    for row, expected in ((0, then), (2, latest)):
        assert scores.loc[row, FEATURES].tolist() == [float(expected[f]) for f in FEATURES]
    connect(settings)
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{champion.version}")
    independent = model.predict_proba(scores.loc[[0, 2], FEATURES].to_numpy())[:, 1]
    assert scores.loc[[0, 2], "score"].tolist() == pytest.approx(independent.tolist(), rel=1e-12)
    assert scores.has_features.tolist() == [True, False, True, False]
    assert scores.score.isna().tolist() == [False, True, False, True]
    best = pd.read_parquet(report.best_path)
    assert best.request_id.tolist() == ["then", "latest", "too-early"]
    assert best.best_driver_id.tolist()[:2] == [driver, driver] and pd.isna(best.best_driver_id[2])


def test_a_named_version_scores_and_a_missing_one_is_refused(settings, champion, tmp_path):
    source = tmp_path / "r.csv"
    source.write_text("request_id,driver_id,event_timestamp\nr,1001,2030-01-01T00:00:00Z\n")
    report = run(settings, source, tmp_path / "s.parquet", version=champion.version, progress=False)
    assert pd.read_parquet(report.scores_path).model_version.tolist() == [champion.version]
    with pytest.raises(ModelUnavailable, match="no version 999"):
        run(settings, source, tmp_path / "t.parquet", version="999", progress=False)
    assert not (tmp_path / "t.parquet").exists()


HEADER = "request_id,driver_id,event_timestamp\n"
GOOD = "r1,1001,2026-01-01T10:00:00Z\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", r"is empty: expected columns request_id, driver_id, event_timestamp"),
        ("header.csv", HEADER, r"holds no requests, only a header"),
        ("no_time.csv", "request_id,driver_id\nr1,1001\n", r"has no column 'event_timestamp'"),
        (
            "bad_time.csv",
            HEADER + GOOD * 9 + "r2,1002,yesterday\n",
            r"bad_time.csv row 10 \(line 11\): event_timestamp 'yesterday' is not an ISO 8601 timestamp",
        ),
        (
            "bad_driver.csv",
            HEADER + GOOD + "r2,10x2,2026-01-01T10:00:00Z\n",
            r"row 2 \(line 3\): driver_id '10x2' is not an integer",
        ),
        (
            "blank.csv",
            HEADER + GOOD + ",1002,2026-01-01T10:00:00Z\n",
            r"row 2 \(line 3\): request_id is empty",
        ),
        ("requests.json", "{}", r"expected a .csv, .csv.gz or .parquet file"),
        ("broken.parquet", "not parquet", r"is not a Parquet file"),
    ],
)
def test_bad_input_is_named_and_leaves_no_file(settings, tmp_path, name, content, message):
    source = tmp_path / name
    source.write_text(content)
    with pytest.raises(BadBatchInput, match=message):
        run(settings, source, tmp_path / "scores.parquet", progress=False)
    assert written(tmp_path) == [name]


def test_parquet_times_that_are_numbers_are_refused(settings, tmp_path):
    source = tmp_path / "epoch.parquet"
    pd.DataFrame({"request_id": ["r"], "driver_id": [1001], "event_timestamp": [1_700_000_000]}).to_parquet(
        source
    )
    with pytest.raises(BadBatchInput, match=r"epoch.parquet row 1: event_timestamp .* is a number"):
        run(settings, source, tmp_path / "scores.parquet", progress=False)


def test_a_failure_after_some_chunks_leaves_the_old_output_and_no_temporary_file(
    settings, tmp_path, monkeypatch
):
    source = tmp_path / "requests.csv"
    source.write_text(HEADER + GOOD * 20)
    output = tmp_path / "scores.parquet"
    output.write_bytes(b"yesterday's scores")
    real, calls = batch.score_requests, []

    def fails_on_the_third_chunk(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(batch, "score_requests", fails_on_the_third_chunk)
    with pytest.raises(OSError, match="disk full"):
        run(settings, source, output, progress=False)
    assert written(tmp_path) == ["requests.csv", "scores.parquet"]
    assert output.read_bytes() == b"yesterday's scores"
    assert not best_path_for(output).exists()


def test_the_command_reports_figures_and_errors_without_a_traceback(settings, tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(HEADER + GOOD * 3)
    bad.write_text(HEADER + GOOD + "r2,1002,\n")
    env = os.environ | settings_env(settings) | {"BATCH_CHUNK_ROWS": "2"}
    command = [sys.executable, "-m", "driver_ranker.jobs.batch"]

    done = subprocess.run(
        [*command, good, tmp_path / "s.parquet", "--no-progress"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "scored 3 rows (1 requests, 3 rows without features)" in done.stdout
    assert "rows/s, peak memory" in done.stdout

    failed = subprocess.run([*command, bad, tmp_path / "t.parquet"], env=env, capture_output=True, text=True)
    assert failed.returncode == 1
    assert "error: bad.csv row 2 (line 3): event_timestamp is empty" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not (tmp_path / "t.parquet").exists()
