"""Model lifecycle over HTTP: alias moves under load, refusals, canary, shadow, admin, and a
registry that is away at start. Real registry, real Redis, `bentoml serve`."""

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.jobs.training import train
from driver_ranker.model.registry import connect
from driver_ranker.ops.processes import wait_for
from driver_ranker.ops.release import promote, set_canary
from driver_ranker.ops.stack import mlflow_server
from tests.support.metrics import served_versions as metric_versions
from tests.support.models import FailingModel, SleepyModel
from tests.support.registry import FEATURES, register, register_logistic
from tests.support.stack import free_port, ranker_server, repo_settings, settings_env

INTERVAL = 2.0
WORKERS = 2
TOKEN = "s3cret-admin-token"
BODY = {"driver_ids": [1001, 1002, 1003, 1004, 1005]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, feast_settings):
    """A registry of this module's own: v1 trained (champion), v2 another logistic regression
    carrying its linear scorer as trained versions do (a version without one brings scikit-learn
    and skops into a worker when it first loads one: test_refusals.py serves those)."""
    settings = repo_settings(feast_settings.feast_repo_path, mlflow_dir=tmp_path_factory.mktemp("lifecycle"))
    v1 = train(settings).version
    v2 = register_logistic(settings, as_trained=True)
    return settings, v1, v2


@pytest.fixture(scope="module")
def server(registry):
    settings, _, _ = registry
    env = {
        "REGISTRY_CHECK_INTERVAL_S": str(INTERVAL),
        "CANARY_PERCENT": "20",
        "SHADOW_ALIAS": "shadow",
        "ADMIN_TOKEN": TOKEN,
    }
    with ranker_server(settings, workers=WORKERS, extra_env=env) as url:
        yield url


def served_versions(url: str, role: str) -> Counter:
    """Versions a role serves across workers, from the per-worker gauge in /metrics."""
    return Counter(metric_versions(httpx.get(f"{url}/metrics", timeout=5).text, role).values())


def test_champion_moves_under_load_without_a_failed_request(server, registry):
    settings, v1, v2 = registry
    answers: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server, timeout=5) as http:
            while not stop.is_set():
                response = http.post("/inference", json=BODY)
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                answers.append((time.monotonic(), response.status_code, version))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        moved_at = time.monotonic()
        promote(connect(settings), settings, v2)
        wait_for(
            lambda: served_versions(server, "champion") == {v2: WORKERS}, 5 * INTERVAL, "every worker on v2"
        )
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert len(answers) > 100
    assert {status for _, status, _ in answers} == {200}, Counter(s for _, s, _ in answers)
    last_old = max(at for at, _, version in answers if version == v1)
    print(
        f"swap under load: {len(answers)} requests, 0 failed, last v1 answer {last_old - moved_at:.2f}s after the move"
    )
    assert last_old - moved_at <= 2 * INTERVAL, f"v1 still answered {last_old - moved_at:.2f}s after the move"
    assert answers[-1][2] == v2


def test_a_version_whose_features_are_not_served_is_refused(server, registry):
    settings, _, v2 = registry
    v3 = register_logistic(settings, [*FEATURES, "surge_factor"])
    client = connect(settings)
    promote(client, settings, v3)
    try:
        wait_for(
            lambda: all(httpx.get(f"{server}/model").json()["refused"] for _ in range(4 * WORKERS)),
            5 * INTERVAL,
            "every worker refused it",
        )
        assert re.search(
            r'driver_ranker_model_refusals_total\{role="champion"\} [1-9]',
            httpx.get(f"{server}/metrics").text,
        )
        info = httpx.get(f"{server}/model").json()
        assert info["version"] == v2
        assert info["refused"]["champion"]["version"] == v3
        assert "surge_factor" in info["refused"]["champion"]["reason"]
        response = httpx.post(f"{server}/inference", json=BODY)
        assert response.status_code == 200 and response.json()["model"]["version"] == v2
    finally:
        promote(client, settings, v2)


def test_canary_takes_its_share_and_a_request_id_sticks(server, registry):
    settings, v1, _ = registry
    client = connect(settings)
    set_canary(client, settings, v1)
    try:
        wait_for(lambda: served_versions(server, "canary") == {v1: WORKERS}, 5 * INTERVAL, "canary loaded")
        with httpx.Client(base_url=server, timeout=5) as http:
            versions = [
                http.post("/inference", json={**BODY, "request_id": f"req-{i}"}).json()["model"]["version"]
                for i in range(2000)
            ]
            share = versions.count(v1) / len(versions) * 100
            assert abs(share - 20) <= 3, share
            for request_id in ("req-7", "req-8", "retry-me"):
                again = {http.post("/inference", json={**BODY, "request_id": request_id}).json()["model"]["version"]
                         for _ in range(20)}  # fmt: skip
                assert len(again) == 1
    finally:
        client.delete_registered_model_alias(settings.model_name, settings.canary_alias)
    wait_for(lambda: httpx.get(f"{server}/model").json()["canary"] is None, 5 * INTERVAL, "canary stopped")


def timed_answers(url: str, n: int) -> tuple[list[dict], float]:
    latencies, answers = [], []
    with httpx.Client(base_url=url, timeout=5) as http:
        for _ in range(n):
            started = time.perf_counter()
            response = http.post("/inference", json={**BODY, "request_id": "shadowed"})
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
            answers.append(response.json())
    return answers, statistics.median(latencies)


@pytest.mark.parametrize("shadow_model", [SleepyModel(0.2), FailingModel()], ids=["slow", "failing"])
def test_a_bad_shadow_changes_neither_answers_nor_latency(server, registry, shadow_model):
    settings, _, _ = registry
    baseline, baseline_median = timed_answers(server, 200)
    version = register(settings, shadow_model, pickled=True)
    client = connect(settings)
    client.set_registered_model_alias(settings.model_name, "shadow", version)
    try:
        wait_for(
            lambda: served_versions(server, "shadow") == {version: WORKERS}, 5 * INTERVAL, "shadow loaded"
        )
        shadowed, shadowed_median = timed_answers(server, 200)
        assert shadowed == baseline
        assert shadowed_median <= baseline_median * 1.5 + 0.002, (baseline_median, shadowed_median)
        outcome = "failed" if isinstance(shadow_model, FailingModel) else "skipped|same_best|other_best"
        assert re.search(
            rf'driver_ranker_shadow_total\{{outcome="({outcome})"\}} [1-9]',
            httpx.get(f"{server}/metrics").text,
        )
    finally:
        client.delete_registered_model_alias(settings.model_name, "shadow")


def test_admin_reload_needs_the_token(server):
    assert httpx.post(f"{server}/admin/reload").status_code == 401
    wrong = httpx.post(f"{server}/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "ADMIN_TOKEN" in wrong.json()["error"]
    right = httpx.post(f"{server}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert right.status_code == 200 and "champion" in right.json()["roles"]


def test_registry_away_at_start_serves_the_bento_model_then_moves_to_the_registry(tmp_path, registry):
    settings, _, v2 = registry
    home = tmp_path / "bentoml-home"
    env = settings_env(settings) | {"BENTOML_HOME": str(home)}
    imported = subprocess.run(
        [sys.executable, "-c", "from driver_ranker.config import get_settings; from driver_ranker.ops.packaging "
         "import import_champion; print(import_champion(get_settings()).tag)"],
        cwd=PROJECT_ROOT, env=os.environ | env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    tag = imported.stdout.strip().splitlines()[-1]
    port = free_port()
    away = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
    extra = {"BENTOML_HOME": str(home), "BENTO_MODEL_TAG": tag, "REGISTRY_CHECK_INTERVAL_S": str(INTERVAL)}
    with ranker_server(away, workers=1, extra_env=extra) as url:
        info = httpx.get(f"{url}/model").json()
        assert info["source"] == "bento-store" and info["version"] == v2 and info["registry_error"]
        assert info["registry_state"] == "unreachable"
        assert httpx.post(f"{url}/inference", json=BODY).status_code == 200
        assert httpx.post(f"{url}/admin/reload").status_code == 404  # no ADMIN_TOKEN: admin is off

        backend = settings.mlflow_tracking_uri
        with mlflow_server(backend, tmp_path / "artifacts", port, tmp_path / "mlflow.log"):
            wait_for(
                lambda: httpx.get(f"{url}/model").json()["source"] == "registry",
                8 * INTERVAL,
                "moved to registry",
            )
            info = httpx.get(f"{url}/model").json()
            assert info["version"] == v2 and info["registry_error"] is None and info["registry_state"] == "ok"

        # The registry goes away again: the loaded model keeps serving, and /model says why.
        wait_for(lambda: httpx.get(f"{url}/model").json()["registry_error"], 5 * INTERVAL, "outage noticed")
        response = httpx.post(f"{url}/inference", json=BODY)
        assert response.status_code == 200 and response.json()["model"]["version"] == v2
        assert httpx.get(f"{url}/model").json()["source"] == "registry"
