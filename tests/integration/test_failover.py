"""Failover under load: a Redis Cluster master, and separately the Sentinel-managed master, is
killed while 4 client threads post to a 2-worker ranker for 30 s. Requests whose drivers lived on
the lost master get a fast 503 until a replica is promoted, then 200 again with no restart; never a
5xx of another kind, never a different score. Real redis-server processes, real `bentoml serve`."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from driver_ranker.features.online import RedisFeatureReader
from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, ranker_server
from tests.support.topologies import (
    SENTINEL_MASTER,
    cluster_master_of,
    redis_cluster,
    redis_sentinel,
    sentinel_master_port,
)

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SECONDS = 30
KILL_AT_S = 5
SLACK_S = 0.75
"""Beyond FEATURE_READ_TIMEOUT_S, for a loaded 2-core machine to schedule the answer."""


@dataclass
class Answer:
    body: str
    sent_s: float
    took_s: float
    status: int
    scores: list | None


def keep_posting(
    url: str, name: str, ids: list[int], started: float, stop: threading.Event, out: list
) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            sent = time.monotonic()
            response = client.post("/inference", json={"driver_ids": ids})
            took = time.monotonic() - sent
            scores = response.json()["scores"] if response.status_code == 200 else None
            out.append(Answer(name, sent - started, took, response.status_code, scores))


def run_with_a_kill(url: str, bodies: dict[str, list[int]], kill) -> tuple[list[Answer], dict, float]:
    """4 threads (the bodies shared between them) for SECONDS; `kill()` at KILL_AT_S. Returns the
    answers, each body's answer before the kill, and when the kill happened (s from the start)."""
    reference = {
        name: httpx.post(f"{url}/inference", json={"driver_ids": ids}).json()["scores"]
        for name, ids in bodies.items()
    }
    names = [list(bodies)[i % len(bodies)] for i in range(4)]
    answers: list[Answer] = []
    stop = threading.Event()
    started = time.monotonic()
    threads = [
        threading.Thread(target=keep_posting, args=(url, n, bodies[n], started, stop, answers)) for n in names
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(KILL_AT_S)
        killed_at = time.monotonic() - started
        kill()
        time.sleep(SECONDS - KILL_AT_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return answers, reference, killed_at


def outage(answers: list[Answer], body: str, killed_at: float) -> tuple[float, int]:
    """Seconds from the kill to the last failed answer of `body`, and how many failed."""
    failed = [a for a in answers if a.body == body and a.status != 200]
    return (max(a.sent_s + a.took_s for a in failed) - killed_at if failed else 0.0), len(failed)


def assert_served_honestly(answers: list[Answer], reference: dict, timeout_s: float) -> None:
    statuses = {a.status for a in answers}
    assert statuses <= {200, 503}, statuses
    wrong = [a for a in answers if a.status == 200 and a.scores != reference[a.body]]
    assert not wrong, wrong[:3]
    slow = [a.took_s for a in answers if a.status == 503 and a.took_s > timeout_s + SLACK_S]
    assert not slow, f"503s slower than {timeout_s} s + {SLACK_S} s: {sorted(slow)[-5:]}"
    last = {name: max(a.sent_s for a in answers if a.body == name) for name in reference}
    for name in reference:  # recovered: the last 10 s of each body are all 200
        tail = [a.status for a in answers if a.body == name and a.sent_s > last[name] - 10]
        assert tail and set(tail) == {200}, (name, tail[-20:])


def report(kind: str, answers: list[Answer], killed_at: float, bodies: list[str]) -> str:
    lines = [f"{kind}: {len(answers)} answers in {SECONDS} s"]
    for body in bodies:
        window, failed = outage(answers, body, killed_at)
        took = [a.took_s * 1e3 for a in answers if a.body == body and a.status == 503]
        median = f", 503 in {statistics.median(took):.0f} ms median" if took else ""
        lines.append(f"  {body}: {failed} answered 503 over {window:.1f} s after the kill{median}")
    return "\n".join(lines)


@pytest.fixture
def topology_settings(tmp_path, feast_settings, champion):
    """Settings of a Feast repo materialized on a topology, the champion from the session registry."""

    def make(kind: str, connection_string: str):
        overrides = {"redis_type": kind, "redis_sentinel_master": SENTINEL_MASTER}
        repo = make_feast_repo(
            tmp_path, DataSpec(n_drivers=40, days=2, n_orders=100), connection_string, **overrides
        )
        return feast_settings.model_copy(
            update={"feast_repo_path": repo, "redis_connection_string": connection_string, **overrides}
        )

    return make


@pytest.mark.slow
def test_a_cluster_master_killed_under_load(tmp_path, topology_settings):
    with redis_cluster(tmp_path / "cluster") as cluster:
        # As Feast's cluster example writes it: materialization and the server start with the option.
        settings = topology_settings(
            "redis_cluster", f"{cluster.connection_string},skip_full_coverage_check=true"
        )
        reader = RedisFeatureReader(open_store(settings), "driver_ranker_v1", FEATURES, 1.0)
        master_of = {
            i: cluster_master_of(cluster.connection_string, reader.redis_key(i)) for i in range(1001, 1041)
        }
        victim = master_of[1001]
        bodies = {
            "lost": [i for i, port in master_of.items() if port == victim][:5],
            "kept": [i for i, port in master_of.items() if port != victim][:5],
        }
        with ranker_server(settings, workers=2) as url:
            answers, reference, killed_at = run_with_a_kill(url, bodies, lambda: cluster.kill(victim))
    print(report("cluster master killed", answers, killed_at, list(bodies)))
    assert_served_honestly(answers, reference, settings.feature_read_timeout_s)
    assert outage(answers, "lost", killed_at)[1] > 0  # the kill was seen
    # Drivers on the other masters: most runs see no failure at all, but while the client reads the
    # cluster's slots again after an error it may drop connections in use (one run in four: 173
    # 503s over 2.6 s); never longer than the lost master's own outage.
    assert outage(answers, "kept", killed_at)[0] <= outage(answers, "lost", killed_at)[0] + 1.0


@pytest.mark.slow
def test_the_sentinel_master_killed_under_load(tmp_path, topology_settings):
    with redis_sentinel(tmp_path / "sentinel") as sentinel:
        settings = topology_settings("redis_sentinel", sentinel.connection_string)
        master = sentinel_master_port(sentinel.connection_string)
        bodies = {"all": list(range(1001, 1006)), "more": list(range(1010, 1020))}
        with ranker_server(settings, workers=2) as url:
            answers, reference, killed_at = run_with_a_kill(url, bodies, lambda: sentinel.kill(master))
        assert sentinel_master_port(sentinel.connection_string) != master  # a replica was promoted
    print(report("sentinel master killed", answers, killed_at, list(bodies)))
    assert_served_honestly(answers, reference, settings.feature_read_timeout_s)
    assert outage(answers, "all", killed_at)[1] > 0
