"""Feature drift, end to end: training stores each feature's deciles with the version; a real server
samples the features its champion scores and exports PSI per feature; shifting the statistics in
real Redis moves the metric (and only for the features shifted), unshifted data keeps it quiet."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pytest

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.features.store import open_store
from driver_ranker.jobs import drift_report
from driver_ranker.jobs.data import FIRST_DRIVER_ID, STATS_FILE, DataSpec
from driver_ranker.jobs.training import train
from driver_ranker.model.drift import SHIFTED_ABOVE, STABLE_BELOW
from driver_ranker.model.registry import load_alias
from driver_ranker.ops.processes import wait_for
from tests.support.prometheus import prometheus_server
from tests.support.stack import make_feast_repo, ranker_server, repo_settings, teardown_repo

ALERTS = PROJECT_ROOT / "deployment" / "prometheus" / "alerts.yml"
SPEC = DataSpec()
SAMPLE_ROWS = 1950  # not a multiple of the 100-driver requests: the ring wraps mid-request
DRIFT_ENV = {"DRIFT_SAMPLE_ROWS": str(SAMPLE_ROWS), "DRIFT_MIN_ROWS": "500", "DRIFT_CHECK_INTERVAL_S": "0.3"}


@pytest.fixture(scope="module")
def drift_repo(tmp_path_factory):
    """A repo and registry of their own: this module rewrites every driver's statistics."""
    repo = make_feast_repo(tmp_path_factory.mktemp("drift"), SPEC)
    settings = repo_settings(repo)
    train(settings)
    yield settings
    teardown_repo(settings)


def write_latest_statistics(settings, conv_factor: float = 1.0, trips_factor: int = 1) -> None:
    """Every driver's latest statistics again, as of now, with conversion and trips scaled: the
    same values as training's last hour when the factors are 1."""
    stats = pd.read_parquet(settings.feast_repo_path / "data" / STATS_FILE)
    latest = stats.sort_values("event_timestamp").groupby("driver_id").tail(1).copy()
    latest["event_timestamp"] = latest["created"] = datetime.now(UTC)
    latest["conv_rate"] = (latest.conv_rate * conv_factor).astype(latest.conv_rate.dtype)
    latest["avg_daily_trips"] = latest.avg_daily_trips * trips_factor
    open_store(settings).write_to_online_store("driver_stats", latest)


def psi_by_feature(metrics: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^driver_ranker_feature_psi\{feature="(\w+)",pid="\d+"\} (\S+)', metrics, re.M)
    }


def drifting_features(prometheus) -> set[str]:
    return {
        alert["labels"]["feature"]
        for alert in prometheus.alerts()
        if alert["labels"]["alertname"] == "DriverRankerFeatureDrift"
    }


def serve_drivers(url: str, requests: int, seed: int) -> None:
    """`requests` answers of 100 drivers drawn from all of them: more rows than the sample holds."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(requests):
            ids = rng.choice(SPEC.n_drivers, 100, replace=False) + FIRST_DRIVER_ID
            assert http.post("/inference", json={"driver_ids": ids.tolist()}).status_code == 200


def settled_psi(url: str, check) -> dict[str, float]:
    """PSI per feature once `check(psi)` holds (the worker computes it every 0.3 s)."""
    found: dict[str, float] = {}

    def ready() -> bool:
        found.update(psi_by_feature(httpx.get(f"{url}/metrics").text))
        return bool(found) and check(found)

    wait_for(ready, within=10, what=f"drift metric to settle (last: {found})", poll_s=0.3)
    return found


def test_training_stores_the_reference_with_the_version(drift_repo):
    model = load_alias(drift_repo)
    reference = model.drift_reference
    assert reference is not None and set(reference.features) == set(model.feature_names)
    for name, feature in reference.features.items():
        assert abs(feature.shares.sum() - 1) < 1e-9, name
        # value bins, then the NaNs' (none: training drops rows without features)
        assert len(feature.shares) == len(feature.edges) + 2 and feature.shares[-1] == 0, name
        assert np.all(np.diff(feature.edges) > 0)
    conv = reference.features["conv_rate"]
    assert len(conv.edges) == 9 and np.allclose(conv.shares[:-1], 0.1, atol=0.01)  # continuous: deciles


def test_drift_is_quiet_on_served_data_and_moves_with_shifted_statistics(drift_repo):
    write_latest_statistics(drift_repo)
    with (
        ranker_server(drift_repo, workers=1, extra_env=DRIFT_ENV) as url,
        prometheus_server([url.removeprefix("http://")], rule_files=[ALERTS]) as prometheus,
    ):
        serve_drivers(url, requests=30, seed=1)
        quiet = settled_psi(url, lambda psi: True)
        prometheus.wait_for_scrapes(3)
        assert drifting_features(prometheus) == set(), prometheus.alerts()
        assert set(quiet) == {"conv_rate", "acc_rate", "avg_daily_trips"}
        assert all(value < STABLE_BELOW for value in quiet.values()), quiet
        drift = httpx.get(f"{url}/model").json()["drift"]
        assert drift["reference"] and drift["sample_rows"] == SAMPLE_ROWS
        assert {f: v["verdict"] for f, v in drift["psi"].items()} == dict.fromkeys(quiet, "stable")

        write_latest_statistics(drift_repo, conv_factor=0.5, trips_factor=3)

        serve_drivers(url, requests=30, seed=2)
        shifted = settled_psi(url, lambda psi: psi.get("conv_rate", 0) > SHIFTED_ABOVE)
        assert shifted["avg_daily_trips"] > SHIFTED_ABOVE, shifted
        assert shifted["acc_rate"] < STABLE_BELOW, shifted  # not shifted: still quiet
        # The alert's expression holds on the real series: pending now, firing after its 30 min.
        wait_for(
            lambda: drifting_features(prometheus) == {"conv_rate", "avg_daily_trips"},
            within=15,
            what=f"DriverRankerFeatureDrift pending for the shifted features ({prometheus.alerts()})",
        )
        verdicts = {f: v["verdict"] for f, v in httpx.get(f"{url}/model").json()["drift"]["psi"].items()}
        assert verdicts == {"conv_rate": "shifted", "avg_daily_trips": "shifted", "acc_rate": "stable"}


def test_drift_report_compares_what_would_be_scored_with_training(drift_repo, tmp_path):
    write_latest_statistics(drift_repo)
    quiet = drift_report.run(drift_repo, out=tmp_path / "quiet")
    table = dict(re.findall(r"^\| (\w+) \| [\d.]+ \| (\w+) \|$", quiet, re.M))
    assert table == {"conv_rate": "stable", "acc_rate": "stable", "avg_daily_trips": "stable"}, quiet
    assert f"{SPEC.n_drivers} drivers compared; 0 unknown and 0 stale" in quiet

    write_latest_statistics(drift_repo, conv_factor=0.5, trips_factor=3)
    shifted = drift_report.run(drift_repo, out=tmp_path / "shifted")
    verdicts = dict(re.findall(r"^\| (\w+) \| [\d.]+ \| (\w+) \|$", shifted, re.M))
    assert verdicts == {"conv_rate": "shifted", "acc_rate": "stable", "avg_daily_trips": "shifted"}, shifted
    assert (tmp_path / "shifted" / "report.png").stat().st_size > 10_000
