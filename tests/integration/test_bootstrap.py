"""`bootstrap prepare`, compose's init job: synthetic data and a champion only with DEMO_DATA on.

Each test has a Feast repo of its own (its own project, so its own Redis keys) with no data, and an
empty MLflow registry in a SQLite file.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from mlflow import MlflowClient

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.features.store import FEATURE_SERVICE, open_store
from driver_ranker.jobs.data import ORDERS_FILE, STATS_FILE, DataSpec, write
from driver_ranker.ops import bootstrap
from tests.support.stack import REDIS, repo_settings, settings_env, teardown_repo

# Small enough to be quick, large enough for training to pass the default AUC gate.
SMALL = DataSpec(n_drivers=200, days=3, n_orders=6000)


def empty_feast_repo(root: Path) -> Path:
    """feature_repo/'s definitions under `root` with a project name of their own, and no data."""
    repo = root / "feature_repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "feature_repo" / "driver_repo.py", repo)
    project = f"t_{uuid.uuid4().hex[:10]}"
    for name in ("feature_store.yaml", "feature_store.sqlite.yaml"):
        yaml = (PROJECT_ROOT / "feature_repo" / name).read_text()
        (repo / name).write_text(yaml.replace("project: driver_ranker", f"project: {project}"))
    return repo


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Demo data off, as compose's init has it by default."""
    repo = empty_feast_repo(tmp_path)
    (tmp_path / "mlflow").mkdir()
    settings = repo_settings(repo).model_copy(update={"demo_data": False})
    yield settings
    if (repo / "data" / "registry.db").exists():  # applied: Feast removes its project's keys
        teardown_repo(settings)


def driver_keys(settings: Settings) -> int:
    """Keys of this repo's Feast project in Redis (Feast's key: entity key + project name)."""
    project = open_store(settings).project
    client = redis.Redis.from_url(f"redis://{REDIS}")
    return sum(1 for _ in client.scan_iter(match=f"*{project}", count=1000))


def registered_models(settings: Settings) -> list[str]:
    client = MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    return [model.name for model in client.search_registered_models()]


def data_files(settings: Settings) -> set[str]:
    return {path.name for path in (settings.feast_repo_path / "data").iterdir()}


def test_init_without_demo_data_writes_nothing_synthetic_and_succeeds(settings, monkeypatch, caplog):
    # What compose runs: the command line, its settings from the environment.
    monkeypatch.setenv("DEMO_DATA", "false")
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="driver_ranker.ops.bootstrap"):
            bootstrap.main(["prepare"])  # no SystemExit: the ranker is not held back
    finally:
        get_settings.cache_clear()

    assert data_files(settings) == {"registry.db"}, "only Feast's registry: no data files"
    assert registered_models(settings) == []
    assert driver_keys(settings) == 0
    # The definitions are applied all the same: they are the schema the ranker reads.
    assert open_store(settings).get_feature_service(FEATURE_SERVICE).name == FEATURE_SERVICE
    assert "NO OFFLINE DATA" in caplog.text and "materialization is skipped" in caplog.text
    assert "NO CHAMPION" in caplog.text and "DEMO_DATA=true" in caplog.text


def test_demo_data_left_in_a_volume_is_not_materialized_without_demo_data(settings, caplog):
    # A volume filled by an earlier `DEMO_DATA=true` run, now pointed at a real Redis.
    bootstrap.write_demo_data(settings, SMALL)
    with caplog.at_level(logging.WARNING, logger="driver_ranker.ops.bootstrap"):
        bootstrap.prepare(settings)
    assert driver_keys(settings) == 0
    assert registered_models(settings) == []
    assert "holds synthetic demo data" in caplog.text


def test_real_data_is_materialized_without_demo_data(settings):
    write(SMALL, settings.feast_repo_path / "data")  # data that bootstrap did not generate
    bootstrap.prepare(settings)
    assert driver_keys(settings) == SMALL.n_drivers
    assert registered_models(settings) == []
    assert data_files(settings) == {STATS_FILE, ORDERS_FILE, "registry.db"}


@pytest.mark.slow
def test_demo_data_creates_data_features_and_a_champion_once(settings):
    demo = settings.model_copy(update={"demo_data": True})
    bootstrap.prepare(demo, SMALL)

    assert {STATS_FILE, ORDERS_FILE, bootstrap.DEMO_MARKER} <= data_files(demo)
    assert driver_keys(demo) == SMALL.n_drivers
    client = MlflowClient(demo.mlflow_tracking_uri, demo.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(demo.model_name, demo.model_alias)
    assert str(champion.version) == "1"

    bootstrap.prepare(demo, SMALL)  # a second `up`: nothing new
    assert len(client.search_model_versions(f"name = '{demo.model_name}'")) == 1


def test_make_serve_turns_demo_data_on_unless_told_otherwise():
    # From a fresh clone `make serve` needs the synthetic data and champion; DEMO_DATA=false opts out.
    recipe = (PROJECT_ROOT / "Makefile").read_text().split("\nserve:", 1)[1].splitlines()[1]
    assert (
        recipe.strip() == "DEMO_DATA=$${DEMO_DATA:-true} $(BIN)/python -m driver_ranker.ops.bootstrap serve"
    )
