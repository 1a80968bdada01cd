"""Redis goes away under a running service: fast 503s, then recovery without a restart."""

import signal
import time

import httpx
import pytest

from driver_ranker.data import DataSpec
from driver_ranker.feature_store import apply, materialize
from tests.support.stack import make_feast_repo, ranker_server, redis_server, repo_settings

BODY = {"driver_ids": [1001, 1002, 1003]}


def post(url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{url}/inference", json=BODY, timeout=5)
    return response, time.monotonic() - started


def wait_for_200(url: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        response, _ = post(url)
        if response.status_code == 200 and response.json()["scores"]:
            return time.monotonic() - started
        time.sleep(0.05)
    pytest.fail(f"no 200 with scores within {within}s")


@pytest.fixture
def own_redis_stack(tmp_path, feast_settings, champion):
    """A redis-server of this test's own, holding features, and the session's registry."""
    with redis_server() as (proc, address):
        repo = make_feast_repo(tmp_path, DataSpec(n_drivers=50, days=2, n_orders=200), redis=address)
        settings = repo_settings(repo, redis=address, mlflow_dir=feast_settings.mlflow_artifact_root.parent)
        yield proc, settings


def test_redis_down_gives_fast_503_and_recovery_without_restart(own_redis_stack):
    proc, settings = own_redis_stack
    port = int(settings.redis_connection_string.rsplit(":", 1)[1])
    with ranker_server(settings, workers=1) as url:
        assert post(url)[0].status_code == 200

        proc.terminate()
        proc.wait(5)
        for _ in range(5):
            response, elapsed = post(url)
            assert response.status_code == 503, response.text
            assert elapsed < 1.0
            assert settings.redis_connection_string in response.json()["error"]
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503

        with redis_server(port):
            materialize(apply(settings))  # this Redis keeps nothing on disk: the data comes back
            recovered_in = wait_for_200(url, within=5)
            assert recovered_in < 2.0
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200


def test_frozen_redis_gives_bounded_503_then_recovery(own_redis_stack):
    proc, settings = own_redis_stack
    with ranker_server(settings, workers=1) as url:
        assert post(url)[0].status_code == 200
        proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                response, elapsed = post(url)
                assert response.status_code == 503
                assert elapsed < 1.0
        finally:
            proc.send_signal(signal.SIGCONT)
        assert wait_for_200(url, within=5) < 2.0
