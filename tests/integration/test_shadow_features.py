"""A shadow whose feature service differs from the served one is scored on its own service's values,
even when the feature names are the same. Real Redis, registry and server."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import httpx
import pandas as pd

from driver_ranker.features.store import apply, materialize, open_store
from driver_ranker.jobs.data import DataSpec
from driver_ranker.model.registry import FEATURE_SERVICE_TAG, connect
from tests.support.stack import (
    make_feast_repo,
    ranker_server,
    repo_settings,
    teardown_repo,
    use_definitions_of,
)

ALT_VIEW = """

# A second view over the same source, served by its own service (written by the test).
driver_stats_alt = FeatureView(
    name="driver_stats_alt",
    entities=[driver],
    ttl=timedelta(days=2),
    schema=[
        Field(name="conv_rate", dtype=Float32),
        Field(name="acc_rate", dtype=Float32),
        Field(name="avg_daily_trips", dtype=Int64),
    ],
    online=True,
    source=driver_stats_source,
)
driver_ranker_alt = FeatureService(name="driver_ranker_alt", features=[driver_stats_alt])
"""
DRIVERS = [1001, 1002, 1003, 1004]


def test_the_shadow_reads_its_own_feature_service(tmp_path, monkeypatch, feast_settings, champion):
    repo = make_feast_repo(tmp_path, DataSpec(n_drivers=10, days=1, n_orders=100))
    with open(repo / "driver_repo.py", "a") as definitions:
        definitions.write(ALT_VIEW)
    settings = repo_settings(repo, mlflow_dir=feast_settings.mlflow_artifact_root.parent)
    use_definitions_of(repo, monkeypatch)
    try:
        store = apply(settings)
        materialize(store, full=True)
        # The alternative view's online values differ from the served view's.
        now = pd.Timestamp(datetime.now(UTC))
        alt = pd.DataFrame(
            {"driver_id": DRIVERS, "event_timestamp": now, "created": now,
             "conv_rate": [0.05, 0.9, 0.1, 0.8], "acc_rate": [0.9, 0.1, 0.8, 0.2], "avg_daily_trips": [1, 900, 3, 700]}
        )  # fmt: skip
        open_store(settings).write_to_online_store("driver_stats_alt", alt)

        client = connect(settings)
        run_id = client.get_model_version(settings.model_name, champion.version).run_id
        shadow = client.create_model_version(
            settings.model_name,
            client.get_model_version(settings.model_name, champion.version).source,
            run_id=run_id,
            tags={FEATURE_SERVICE_TAG: "driver_ranker_alt"},
        ).version
        client.set_registered_model_alias(settings.model_name, "shadow", shadow)
        try:
            with ranker_server(settings, workers=1, extra_env={"SHADOW_ALIAS": "shadow"}) as url:
                assert httpx.get(f"{url}/model").json()["shadow"]["feature_service"] == "driver_ranker_alt"
                for i in range(20):
                    assert httpx.post(
                        f"{url}/inference", json={"driver_ids": DRIVERS, "request_id": f"s{i}"}
                    ).is_success
                time.sleep(1)
                metrics = httpx.get(f"{url}/metrics").text
        finally:
            client.delete_registered_model_alias(settings.model_name, "shadow")
        count = re.search(r"^driver_ranker_shadow_score_diff_count (\S+)", metrics, re.M)
        total = re.search(r"^driver_ranker_shadow_score_diff_sum (\S+)", metrics, re.M)
        assert count and float(count.group(1)) >= 10
        # The same model on the served rows would differ by exactly 0.
        assert float(total.group(1)) / float(count.group(1)) > 0.05
    finally:
        teardown_repo(settings)
