"""Faults under load: Redis killed, Redis frozen, SIGTERM. Each test starts its own redis-server
and drives the service from several threads."""

import re
import signal
import time
from collections import Counter

import httpx
import psutil
import pytest

from driver_ranker.features.store import apply, materialize
from driver_ranker.jobs.data import DataSpec
from driver_ranker.ops.processes import stop_process_group
from tests.support.load import Load
from tests.support.stack import make_feast_repo, ranker_server, redis_server, repo_settings, start_ranker

BODY = {"driver_ids": [1001, 1002, 1003]}


def first_200_after(load: Load, moment: float, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(status == 200 and body["scores"] for _, status, _, body in load.since(moment)):
            return (
                min(t for t, status, _, body in load.since(moment) if status == 200 and body["scores"])
                - moment
            )
        time.sleep(0.05)
    pytest.fail(f"no 200 with scores within {within}s")


@pytest.fixture
def own_redis_stack(tmp_path, feast_settings, champion):
    """A redis-server of this test's own, holding features, and the session's registry."""
    with redis_server() as (proc, address):
        repo = make_feast_repo(tmp_path, DataSpec(n_drivers=50, days=2, n_orders=200), redis=address)
        settings = repo_settings(repo, redis=address, mlflow_dir=feast_settings.mlflow_artifact_root.parent)
        yield proc, settings


def test_redis_killed_under_load_gives_fast_503_and_recovers_without_restart(own_redis_stack):
    proc, settings = own_redis_stack
    port = int(settings.redis_connection_string.rsplit(":", 1)[1])
    with ranker_server(settings, workers=2) as url, Load(url, BODY) as load:
        time.sleep(1)
        killed_at = time.monotonic()
        proc.kill()
        proc.wait(5)
        time.sleep(2)
        down = load.since(killed_at + 0.1)
        assert down and {status for _, status, _, _ in down} == {503}, Counter(s for _, s, _, _ in down)
        assert max(seconds for _, _, seconds, _ in down) < 1.0
        assert all(settings.redis_connection_string in body["error"] for *_, body in down)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 503
        assert httpx.get(f"{url}/livez", timeout=5).status_code == 200  # no worker died

        with redis_server(port):
            materialize(apply(settings))  # this Redis keeps nothing on disk: the data comes back
            back_at = time.monotonic()
            recovered = first_200_after(load, back_at, within=10)
            assert recovered < 2.0
            deadline = time.monotonic() + 3  # readiness is cached for a second
            while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "/readyz not 200 again"
                time.sleep(0.1)
    assert {status for _, status, _, _ in load.results} <= {200, 503}
    print(
        f"redis killed: {len(down)} answered 503, slowest {max(s for _, _, s, _ in down):.3f}s; 200 again {recovered:.3f}s after"
    )


@pytest.mark.parametrize("reader", ["auto", "feast-sdk"])
def test_frozen_redis_under_load_gives_bounded_503_then_recovery(own_redis_stack, reader):
    """Both readers: the direct one, and Feast's SDK (async, so a timeout leaves no thread blocked)."""
    proc, settings = own_redis_stack
    with (
        ranker_server(settings, workers=2, extra_env={"FEATURE_READER": reader}) as url,
        Load(url, BODY) as load,
    ):
        time.sleep(1)
        workers = [
            psutil.Process(p) for p in {httpx.get(f"{url}/model").json()["worker_pid"] for _ in range(20)}
        ]
        threads_before = sum(w.num_threads() for w in workers)
        frozen_at = time.monotonic()
        proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(2)
            threads_frozen = sum(w.num_threads() for w in workers)
        finally:
            proc.send_signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        during = [r for r in load.since(frozen_at + 0.1) if r[0] < thawed_at - 1.0]
        assert during and {status for _, status, _, _ in during} == {503}
        assert max(seconds for _, _, seconds, _ in during) < 1.0
        assert first_200_after(load, thawed_at, within=5) < 2.0
        assert threads_frozen <= threads_before + 2, (threads_before, threads_frozen)
        timed_out = re.search(
            r'^driver_ranker_feature_read_seconds_count\{outcome="unavailable"\} (\S+)',
            httpx.get(f"{url}/metrics").text,
            re.M,
        )
        assert timed_out and float(timed_out.group(1)) >= 1  # reads that timed out are in the histogram
    assert {status for _, status, _, _ in load.results} <= {200, 503}
    print(
        f"frozen redis ({reader}): {len(during)} answered 503, slowest {max(s for _, _, s, _ in during):.3f}s"
    )


def test_redis_restarted_empty_is_not_ready_and_says_every_driver_is_unknown(own_redis_stack):
    proc, settings = own_redis_stack
    port = int(settings.redis_connection_string.rsplit(":", 1)[1])
    with ranker_server(settings, workers=1) as url:
        log = settings.feast_repo_path.parent / f"ranker-{url.rsplit(':', 1)[1]}.log"
        assert httpx.get(f"{url}/readyz").status_code == 200
        proc.kill()
        proc.wait(5)
        with redis_server(port):  # up again, and empty
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/readyz").status_code != 503:
                assert time.monotonic() < deadline, "/readyz still 200 over an empty online store"
                time.sleep(0.1)
            answer = httpx.post(f"{url}/inference", json=BODY)
            assert answer.status_code == 200 and answer.json()["unknown_driver_ids"] == BODY["driver_ids"]
            metrics = httpx.get(f"{url}/metrics").text
            assert re.search(r"^driver_ranker_all_drivers_unknown_total [1-9]", metrics, re.M)
            assert "every driver of a request (3) is unknown" in log.read_text()
            materialize(apply(settings))
            deadline = time.monotonic() + 10
            while httpx.get(f"{url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "/readyz not back after materialization"
                time.sleep(0.1)
            assert httpx.post(f"{url}/inference", json=BODY).json()["scores"]


def test_sigterm_under_load_finishes_in_flight_requests_and_exits(feast_settings, champion):
    proc, url = start_ranker(feast_settings, workers=2)
    try:
        with Load(url, BODY) as load:
            time.sleep(1)
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # to the server only, as `docker stop` does
            proc.wait(30)
            exited_in = time.monotonic() - stopped_at
            time.sleep(0.5)
        statuses = Counter(status for _, status, _, _ in load.results)
        # In flight: answered. After: refused cleanly (connection refused), never a 5xx.
        assert set(statuses) <= {200, -1}, statuses
        assert statuses[200] > 0 and statuses[-1] > 0 and exited_in < 30
        print(f"sigterm: exited in {exited_in:.1f}s, {statuses[200]} answered, {statuses[-1]} refused after")
    finally:
        stop_process_group(proc)
