"""Training registers versions in a real MLflow registry (SQLite in a temporary folder)."""

import shutil

import mlflow
import pandas as pd
import pytest

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.features.store import FEATURE_SERVICE, require_data
from driver_ranker.jobs.data import ORDERS_FILE, DataSpec
from driver_ranker.jobs.training import TrainOptions, train
from driver_ranker.model.registry import FEATURE_SERVICE_TAG, connect, load_alias, version_for_alias
from tests.support.stack import make_feast_repo, repo_settings, teardown_repo

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]


def test_champion_is_registered_with_signature_metrics_and_tags(feast_settings, champion):
    client = connect(feast_settings)
    version = client.get_model_version(feast_settings.model_name, champion.version)
    assert champion.champion
    assert str(version_for_alias(client, feast_settings.model_name, "champion").version) == champion.version
    assert version.tags[FEATURE_SERVICE_TAG] == FEATURE_SERVICE
    run = client.get_run(version.run_id)
    assert {"holdout_auc", "holdout_log_loss"} <= set(run.data.metrics)
    assert run.data.tags[FEATURE_SERVICE_TAG] == FEATURE_SERVICE
    assert "/" in run.data.tags["data_window"] and run.data.tags["git_commit"]
    info = mlflow.models.get_model_info(f"models:/{feast_settings.model_name}/{champion.version}")
    assert info.signature.inputs.input_names() == FEATURES
    assert info.saved_input_example_info is not None


def test_default_data_passes_the_quality_gate(champion):
    assert champion.metrics["holdout_auc"] >= TrainOptions().min_auc


def test_loaded_champion_scores_like_the_registry_model(feast_settings, champion):
    loaded = load_alias(feast_settings)
    assert (loaded.version, loaded.feature_names) == (champion.version, tuple(FEATURES))
    rows = pd.DataFrame({"conv_rate": [0.9, 0.1], "acc_rate": [0.9, 0.1], "avg_daily_trips": [120, 5]})
    proba = loaded.estimator.predict_proba(rows.to_numpy())[:, 1]
    assert proba[0] > proba[1]


def test_a_worse_model_does_not_take_the_alias(feast_settings, champion):
    # Gate off, so only the comparison with the champion on the same holdout can refuse it.
    report = train(feast_settings, TrainOptions(features=("avg_daily_trips",), min_auc=0.0))
    assert not report.champion
    assert "worse than champion" in report.reason
    client = connect(feast_settings)
    assert str(version_for_alias(client, feast_settings.model_name, "champion").version) == champion.version
    assert client.get_model_version(feast_settings.model_name, report.version).aliases == []


def test_the_quality_gate_refuses_a_version(feast_settings, champion):
    report = train(feast_settings, TrainOptions(min_auc=0.99))
    assert not report.champion and "below the gate" in report.reason
    client = connect(feast_settings)
    assert str(version_for_alias(client, feast_settings.model_name, "champion").version) == champion.version


def test_single_class_orders_fail_before_anything_is_registered(tmp_path):
    repo = make_feast_repo(tmp_path, DataSpec(n_drivers=20, days=2, n_orders=500))
    settings = repo_settings(repo)
    try:
        orders = pd.read_parquet(repo / "data" / ORDERS_FILE)
        orders.assign(trip_completed=1).to_parquet(repo / "data" / ORDERS_FILE)
        with pytest.raises(ValueError, match="single class"):
            train(settings)
        assert connect(settings).search_model_versions(f"name='{settings.model_name}'") == []
    finally:
        teardown_repo(settings)


def test_missing_data_names_the_file_and_the_make_target(tmp_path):
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for name in ("driver_repo.py", "feature_store.yaml"):
        shutil.copy(PROJECT_ROOT / "feature_repo" / name, repo)
    with pytest.raises(FileNotFoundError, match=r"data/driver_stats.parquet missing: run `make data`"):
        require_data(repo_settings(repo))
