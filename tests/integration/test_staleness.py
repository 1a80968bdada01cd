"""One freshness rule on both paths: statistics older than the feature view's ttl are not scored,
online (`stale_driver_ids`) as in batch (`has_features=false`). Old and fresh statistics are written
to the offline source and materialized into real Redis; the real server answers over HTTP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest

from driver_ranker.features.store import apply, materialize
from driver_ranker.jobs.batch import best_path_for, run
from driver_ranker.jobs.data import STATS_FILE, DataSpec
from tests.support.stack import make_feast_repo, ranker_server, repo_settings, teardown_repo

FRESH = [1001, 1002, 1003]
STALE = [1004, 1005]  # last statistics 3 days old; the view's ttl is 2 days
BORDER = [1006]  # 47 hours old: within the ttl, scored


@pytest.fixture(scope="module")
def aged_repo(tmp_path_factory, feast_settings, champion):
    """A repo of its own whose offline statistics end 1 hour, 47 hours and 3 days ago per driver."""
    repo = make_feast_repo(tmp_path_factory.mktemp("aged"), DataSpec(n_drivers=10, days=1, n_orders=100))
    settings = repo_settings(repo, mlflow_dir=feast_settings.mlflow_artifact_root.parent)
    path = repo / "data" / STATS_FILE
    stats = pd.read_parquet(path)
    now = pd.Timestamp(datetime.now(UTC)).floor("s")
    ages = {d: timedelta(hours=1) for d in FRESH} | {d: timedelta(days=3) for d in STALE}
    ages |= {d: timedelta(hours=47) for d in BORDER}
    rows = stats[stats.driver_id.isin(list(ages))].groupby("driver_id").tail(2).copy()
    # Each driver's two latest rows, moved so that the latest is `age` old and the other 5 days.
    latest = rows.groupby("driver_id").event_timestamp.transform("max") == rows.event_timestamp
    rows["event_timestamp"] = [
        (now - ages[d]) if is_latest else (now - timedelta(days=5))
        for d, is_latest in zip(rows.driver_id, latest, strict=True)
    ]
    rows["event_timestamp"] = rows.event_timestamp.astype(stats.event_timestamp.dtype)
    rows["created"] = rows.event_timestamp
    rows.astype(stats.dtypes.to_dict()).to_parquet(path, index=False)
    # Feast's Redis store never overwrites newer statistics with older ones: start from no keys.
    teardown_repo(settings)
    materialize(apply(settings), full=True)
    yield settings
    teardown_repo(settings)


def test_online_and_batch_agree_on_stale_statistics(aged_repo, tmp_path):
    drivers = [*FRESH, *STALE, *BORDER]
    with ranker_server(aged_repo, workers=1) as url:
        answer = httpx.post(f"{url}/inference", json={"driver_ids": drivers}).json()
        metrics = httpx.get(f"{url}/metrics").text
    assert answer["stale_driver_ids"] == STALE, answer
    assert answer["unknown_driver_ids"] == []
    online = {s["driver_id"]: s["score"] for s in answer["scores"]}
    assert set(online) == {*FRESH, *BORDER}
    assert re.search(r"^driver_ranker_stale_drivers_total 2\.0", metrics, re.M)
    # The oldest features scored were 47 hours old: in the bucket up to 2 days, above 1 day.
    assert re.search(r'^driver_ranker_feature_age_seconds_bucket\{le="86400.0"\} 0\.0', metrics, re.M)
    assert re.search(r'^driver_ranker_feature_age_seconds_bucket\{le="172800.0"\} 1\.0', metrics, re.M)

    source = tmp_path / "requests.csv"
    at = datetime.now(UTC).isoformat()
    pd.DataFrame({"request_id": "r", "driver_id": drivers, "event_timestamp": at}).to_csv(source, index=False)
    run(aged_repo, source, tmp_path / "scores.parquet", progress=False)
    scored = pd.read_parquet(tmp_path / "scores.parquet").set_index("driver_id")
    assert scored.loc[STALE, "has_features"].eq(False).all()
    assert scored.loc[[*FRESH, *BORDER], "has_features"].all()
    np.testing.assert_allclose(
        scored.loc[list(online), "score"].to_numpy(), list(online.values()), rtol=1e-9, atol=0
    )
    best = pd.read_parquet(best_path_for(tmp_path / "scores.parquet"))
    assert best.best_driver_id.tolist() == [answer["best_driver_id"]]
