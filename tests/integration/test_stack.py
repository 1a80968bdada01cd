"""The deployment's topology as processes: an `mlflow server` (PostgreSQL backend where one answers),
training that registers through it over HTTP, and the ranker loading its champion from it."""

import uuid

import httpx
import pytest
from mlflow import MlflowClient

from driver_ranker.config import Settings
from driver_ranker.jobs.data import DataSpec
from driver_ranker.jobs.training import TrainOptions, train
from driver_ranker.ops import balancer, bootstrap
from driver_ranker.ops.stack import (
    bootstrap_env,
    drop_postgres_database,
    main,
    mlflow_server,
    mlflow_works,
    postgres_backend,
)
from tests.integration.test_bootstrap import driver_keys, empty_feast_repo
from tests.support.stack import free_port, make_feast_repo, ranker_server, repo_settings, teardown_repo


@pytest.fixture
def mlflow_url(tmp_path):
    database = f"driver_ranker_test_{uuid.uuid4().hex[:8]}"
    backend = postgres_backend(database) or f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        with mlflow_server(
            backend, tmp_path / "served-artifacts", free_port(), tmp_path / "mlflow.log"
        ) as url:
            yield url
    finally:
        if backend.startswith("postgresql"):
            drop_postgres_database(database)


def test_mlflow_server_accepts_the_compose_host_only(mlflow_url):
    assert mlflow_works(mlflow_url, host_header="mlflow:5000")
    assert not mlflow_works(mlflow_url, host_header="evil.example.com")
    # ... while its health check answers all the same: a health check alone proves nothing.
    assert httpx.get(f"{mlflow_url}/health", headers={"Host": "evil.example.com"}).status_code == 200


def test_train_through_the_server_and_serve_its_champion(tmp_path, mlflow_url):
    repo = make_feast_repo(tmp_path / "stack", DataSpec(n_drivers=200, days=3, n_orders=6000))
    settings = repo_settings(repo).model_copy(update={"mlflow_tracking_uri": mlflow_url})
    try:
        report = train(settings, TrainOptions(min_auc=0.6))
        assert report.champion, report.reason

        client = MlflowClient(mlflow_url, mlflow_url)
        version = client.get_model_version(settings.model_name, report.version)
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        served = tmp_path / "served-artifacts"
        assert any(p.name == "MLmodel" for p in served.rglob("MLmodel")), "artifacts were not uploaded"

        with ranker_server(settings, workers=1) as url:
            answer = httpx.post(f"{url}/inference", json={"driver_ids": [1001, 1002, 77]}, timeout=5).json()
            assert answer["model"] == {
                "name": "driver-ranker",
                "version": report.version,
                "alias": "champion",
            }
            assert answer["unknown_driver_ids"] == [77] and len(answer["scores"]) == 2
            assert httpx.get(f"{url}/model", timeout=5).json()["version"] == report.version
    finally:
        teardown_repo(settings)


def test_make_stack_runs_its_init_step_with_demo_data_unless_told_otherwise():
    # `make stack` starts a fresh MLflow server: without the demo's champion nothing would serve.
    assert Settings(_env_file=None, demo_data=bootstrap_env({"PATH": "/bin"})["DEMO_DATA"]).demo_data
    assert bootstrap_env({"DEMO_DATA": "false"})["DEMO_DATA"] == "false"
    assert bootstrap_env({"PATH": "/bin"})["PATH"] == "/bin"


def test_init_against_an_existing_server_registers_nothing_without_demo_data(tmp_path, mlflow_url):
    # Compose's default: init pointed at an MLflow server (and Redis) it must not fill with demo data.
    repo = empty_feast_repo(tmp_path / "init")
    settings = repo_settings(repo).model_copy(update={"mlflow_tracking_uri": mlflow_url, "demo_data": False})
    try:
        bootstrap.prepare(settings)
        assert MlflowClient(mlflow_url, mlflow_url).search_registered_models() == []
        assert driver_keys(settings) == 0
    finally:
        teardown_repo(settings)


def test_make_stack_replicas_need_haproxy_and_say_how_to_get_it(monkeypatch, tmp_path):
    # `make stack REPLICAS=n` installs it as root; anyone else is told how, before any replica starts.
    monkeypatch.setattr(balancer.shutil, "which", lambda *args, **kwargs: None)
    replicas = tmp_path / "replicas"
    with (
        pytest.raises(RuntimeError, match="apt-get install haproxy"),
        balancer.balanced_replicas(2, {}, replicas, 0),
    ):
        pass
    assert not replicas.exists()
    with pytest.raises(SystemExit):
        main(["--replicas", "0"])
