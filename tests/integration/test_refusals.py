"""Versions registered the usual MLflow ways are served; any version that cannot be served is refused
cleanly; registry outages and refused credentials are told apart. Real registry (SQLite, and a real
`mlflow server` with basic auth), real Redis, `bentoml serve` over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.jobs.training import train
from driver_ranker.model.registry import connect
from driver_ranker.ops.processes import free_port, stop_process_group, wait_for
from driver_ranker.ops.release import promote
from tests.support.registry import (
    artifact_location,
    create_version_from_run,
    register_logistic,
    register_pyfunc,
    register_run_model,
)
from tests.support.stack import ranker_server, repo_settings, settings_env

INTERVAL = 1.0
TOKEN = "refusals-admin-token"
BODY = {"driver_ids": [1001, 1002, 1003]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, feast_settings) -> tuple[Settings, str]:
    settings = repo_settings(feast_settings.feast_repo_path, mlflow_dir=tmp_path_factory.mktemp("refusals"))
    return settings, train(settings).version


@pytest.fixture(scope="module")
def server(registry):
    settings, _ = registry
    env = {"REGISTRY_CHECK_INTERVAL_S": str(INTERVAL), "ADMIN_TOKEN": TOKEN}
    with ranker_server(settings, workers=1, extra_env=env) as url:
        yield url, log_of(settings, url)


def log_of(settings: Settings, url: str) -> Path:
    return settings.feast_repo_path.parent / f"ranker-{url.rsplit(':', 1)[1]}.log"


def served_after_move(url: str, settings: Settings, version: str) -> dict:
    """Moves the champion to `version` and returns /model once the worker has acted on it."""
    promote(connect(settings), settings, version)
    wait_for(
        lambda: (
            httpx.get(f"{url}/model").json()["version"] == version
            or (httpx.get(f"{url}/model").json()["refused"].get("champion") or {}).get("version") == version
        ),
        10 * INTERVAL,
        f"the worker acted on v{version}",
    )
    return httpx.get(f"{url}/model").json()


@pytest.mark.parametrize("way", ["register_model", "create_model_version"])
def test_versions_registered_the_usual_ways_are_served(registry, server, way):
    settings, champion = registry
    url, _ = server
    client = connect(settings)
    if way == "register_model":  # the training run's tags name the feature service
        version = register_run_model(settings, client.get_model_version(settings.model_name, champion).run_id)
    else:  # an untagged run: the one service whose features equal the signature's inputs
        version = create_version_from_run(settings)
    assert not client.get_model_version(settings.model_name, version).tags.get("feast.feature_service")
    try:
        info = served_after_move(url, settings, version)
        assert info["version"] == version and info["feature_service"] == "driver_ranker_v1", info
        answer = httpx.post(f"{url}/inference", json=BODY).json()
        assert answer["model"]["version"] == version and answer["best_driver_id"] is not None
    finally:
        promote(client, settings, champion)


def test_a_version_whose_features_no_service_names_is_refused_unless_a_default_is_set(registry, tmp_path):
    settings, champion = registry
    client = connect(settings)
    version = register_logistic(settings, ["conv_rate", "acc_rate"], tags=None)
    promote(client, settings, version)
    try:
        # No tag, no run tag, no service with exactly these inputs, no default: refused at start,
        # and with no Bento model the worker stops, naming the version and why.
        home = tmp_path / "empty-bentoml-home"
        pattern = rf"version {version}, refused: .*DEFAULT_FEATURE_SERVICE"
        start_fails(settings, {"BENTOML_HOME": str(home)}, tmp_path / "no-default.log", pattern)
        # With DEFAULT_FEATURE_SERVICE (which serves a superset) it is served.
        env = {"DEFAULT_FEATURE_SERVICE": "driver_ranker_v1"}
        with ranker_server(settings, workers=1, extra_env=env) as url:
            info = httpx.get(f"{url}/model").json()
            assert info["version"] == version and info["feature_service"] == "driver_ranker_v1"
            assert info["feature_names"] == ["conv_rate", "acc_rate"]
            assert httpx.post(f"{url}/inference", json=BODY).json()["model"]["version"] == version
    finally:
        promote(client, settings, champion)


def start_fails(settings: Settings, extra: dict[str, str], log_path: Path, pattern: str) -> None:
    """Starts a ranker that must not become ready: its log must match `pattern` (the worker's
    message) and the whole server must stop by itself, without ever answering /readyz."""
    port = free_port()
    env = os.environ | settings_env(settings) | {"WORKERS": "1"} | extra
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service:DriverRanker", "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not re.search(pattern, log_path.read_text()):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code != 200
            time.sleep(0.2)
        proc.wait(timeout=30)  # raises TimeoutExpired if the server goes on
    finally:
        stop_process_group(proc)


BAD_VERSIONS = {
    "no signature": (lambda s: register_logistic(s, signed=False), "has no signature"),
    "not scikit-learn": (register_pyfunc, "sklearn"),
    "unknown feature service": (
        lambda s: register_logistic(s, tags={"feast.feature_service": "driver_ranker_v9"}),
        "driver_ranker_v9",
    ),
    "features not served": (
        lambda s: register_logistic(s, ["conv_rate", "acc_rate", "avg_daily_trips", "surge_factor"]),
        "surge_factor",
    ),
    "artifact gone": (None, "No such artifact"),
}


@pytest.mark.parametrize("kind", list(BAD_VERSIONS))
def test_a_version_that_cannot_be_served_is_refused_once_and_the_old_one_keeps_serving(
    registry, server, kind
):
    settings, champion = registry
    url, log = server
    client = connect(settings)
    make, reason = BAD_VERSIONS[kind]
    if make is None:
        version = register_logistic(settings)
        shutil.rmtree(artifact_location(client, settings.model_name, version))
    else:
        version = make(settings)
    before = refusals_total(url)
    try:
        info = served_after_move(url, settings, version)
        assert info["version"] == champion, info
        refusal = info["refused"]["champion"]
        assert refusal["version"] == version and re.search(reason, refusal["reason"]), refusal
        answer = httpx.post(f"{url}/inference", json=BODY)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == champion
        assert refusals_total(url) == before + 1
        time.sleep(3 * INTERVAL)  # three more checks: not retried
        line = f"refused driver-ranker v{version} for champion"
        assert log.read_text().count(line) == 1
        assert refusals_total(url) == before + 1
        # A forced reload tries it again.
        reload = httpx.post(f"{url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert "refused" in reload.json()["roles"]["champion"]
        assert log.read_text().count(line) == 2
    finally:
        promote(client, settings, champion)
    wait_for(lambda: not httpx.get(f"{url}/model").json()["refused"], 10 * INTERVAL, "refusal cleared")
    assert "Traceback" not in log.read_text()


def refusals_total(url: str) -> float:
    found = re.search(
        r'^driver_ranker_model_refusals_total\{role="champion"\} (\S+)',
        httpx.get(f"{url}/metrics").text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_bad_canary_and_shadow_aliases_never_stop_the_champion(registry):
    settings, champion = registry
    client = connect(settings)
    client.set_registered_model_alias(
        settings.model_name, "challenger", register_logistic(settings, signed=False)
    )
    client.set_registered_model_alias(settings.model_name, "shadow", register_pyfunc(settings))
    env = {"CANARY_PERCENT": "50", "SHADOW_ALIAS": "shadow"}
    try:
        with ranker_server(settings, workers=1, extra_env=env) as url:
            info = httpx.get(f"{url}/model").json()
            assert info["version"] == champion and info["canary"] is None and info["shadow"] is None
            assert set(info["refused"]) == {"canary", "shadow"}
            versions = {
                httpx.post(f"{url}/inference", json={**BODY, "request_id": f"r{i}"}).json()["model"][
                    "version"
                ]
                for i in range(40)
            }
            assert versions == {champion}
    finally:
        client.delete_registered_model_alias(settings.model_name, "challenger")
        client.delete_registered_model_alias(settings.model_name, "shadow")


def import_champion_into(home: Path, settings: Settings) -> str:
    """`make bento`'s import of the champion into a BentoML store of the test's own; returns its tag."""
    imported = subprocess.run(
        [sys.executable, "-c", "from driver_ranker.config import get_settings; from driver_ranker.ops.packaging "
         "import import_champion; print(import_champion(get_settings()).tag)"],
        cwd=PROJECT_ROOT, env=os.environ | settings_env(settings) | {"BENTOML_HOME": str(home)},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return imported.stdout.strip().splitlines()[-1]


def test_a_worker_starting_on_a_refused_champion_serves_the_bento_model(registry, tmp_path):
    settings, champion = registry
    home = tmp_path / "bentoml-home"
    tag = import_champion_into(home, settings)
    client = connect(settings)
    bad = register_logistic(settings, signed=False)
    promote(client, settings, bad)
    try:
        extra = {"BENTOML_HOME": str(home), "BENTO_MODEL_TAG": tag}
        with ranker_server(settings, workers=1, extra_env=extra) as url:
            info = httpx.get(f"{url}/model").json()
            assert info["source"] == "bento-store" and info["version"] == champion
            assert info["refused"]["champion"]["version"] == bad
            assert httpx.post(f"{url}/inference", json=BODY).json()["model"]["version"] == champion
        pattern = rf"version {bad}, refused: .*has no signature"
        start_fails(settings, {"BENTOML_HOME": str(tmp_path / "empty")}, tmp_path / "refused.log", pattern)
    finally:
        promote(client, settings, champion)


AUTH_PASSWORD = "registry-admin-pass-1"


def test_refused_credentials_are_told_apart_from_an_unreachable_registry(registry, tmp_path):
    """A real `mlflow server --app-name basic-auth`: wrong credentials give `denied`, a stopped
    server `unreachable`; the Bento's model serves throughout."""
    settings, champion = registry
    home = tmp_path / "bentoml-home"
    tag = import_champion_into(home, settings)
    port = free_port()
    config = tmp_path / "auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {AUTH_PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    command = [
        sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
        "--backend-store-uri", settings.mlflow_tracking_uri, "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    mlflow_env = os.environ | {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "t"}
    with open(tmp_path / "mlflow.log", "wb") as out:
        proc = subprocess.Popen(
            command, env=mlflow_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(lambda: answers_401(port), 90, "mlflow basic-auth server up")
        remote = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
        extra = {
            "BENTOML_HOME": str(home), "BENTO_MODEL_TAG": tag, "REGISTRY_CHECK_INTERVAL_S": str(INTERVAL),
            "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "not-the-password",
        }  # fmt: skip
        with ranker_server(remote, workers=1, extra_env=extra) as url:
            info = httpx.get(f"{url}/model").json()
            assert info["registry_state"] == "denied" and "401" in info["registry_error"], info
            assert info["source"] == "bento-store" and info["version"] == champion
            assert httpx.post(f"{url}/inference", json=BODY).status_code == 200
            stop_process_group(proc)
            wait_for(
                lambda: httpx.get(f"{url}/model").json()["registry_state"] == "unreachable",
                10 * INTERVAL,
                "outage seen",
            )
            assert httpx.post(f"{url}/inference", json=BODY).status_code == 200
            log = log_of(remote, url).read_text()
            assert "refuses our credentials or permissions" in log and "does not answer" in log
            assert "not-the-password" not in log
    finally:
        stop_process_group(proc)


def answers_401(port: int) -> bool:
    try:
        return (
            httpx.get(f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search").status_code == 401
        )
    except httpx.HTTPError:
        return False


def test_a_version_the_registry_denies_us_is_refused_saying_so(registry, monkeypatch):
    """A registry that lets us read the alias but not the version's run or artifacts (MLflow's
    permissions are per model and per experiment) answers PERMISSION_DENIED mid-load: the version
    is refused, saying it is our credentials, and the champion keeps serving. The error is the one
    MLflow's client raises for a 403, injected: this is a test of its handling."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    from driver_ranker.features.store import open_store
    from driver_ranker.serving import lifecycle

    settings, champion = registry
    promote(connect(settings), settings, champion)
    manager = lifecycle.ModelManager(settings, open_store(settings))
    manager.start()
    assert manager.champion.model.version == champion
    denied = register_logistic(settings)

    def load_version(client, version, alias):
        if str(version.version) == denied:
            raise MlflowException("Permission denied for requested operation.", error_code=PERMISSION_DENIED)
        return real_load_version(client, version, alias)

    real_load_version = lifecycle.load_version
    monkeypatch.setattr(lifecycle, "load_version", load_version)
    promote(connect(settings), settings, denied)
    try:
        outcome = manager.check()
        assert outcome["champion"].startswith(f"v{denied} refused: the registry refused our credentials")
        assert manager.champion.model.version == champion
        assert manager.registry_state == "ok"  # the registry answers; this version is what we may not read
        refusal = manager.refused["champion"]
        assert refusal["version"] == denied and "PERMISSION_DENIED" not in refusal["reason"]
        assert "Permission denied" in refusal["reason"] and "credentials or permissions" in refusal["reason"]
        assert manager.check()["champion"] == f"v{denied} refused before"  # not retried
    finally:
        promote(connect(settings), settings, champion)
