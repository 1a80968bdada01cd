"""Bandit routing (ROUTING=bandit) on the real server (2 workers), the real registry and Redis: with
no outcomes yet the arms share the traffic; outcomes posted to /feedback (the challenger's picks
complete, the champion's do not) move one posterior that both workers read, and most traffic to
the challenger, while the floor keeps the champion fed; a retried request id keeps its arm."""

from __future__ import annotations

import uuid
from collections import Counter

import httpx
import pytest
import redis

from driver_ranker.features.store import open_store
from driver_ranker.model.registry import connect
from driver_ranker.ops.processes import wait_for
from tests.support.registry import register_logistic
from tests.support.stack import REDIS, ranker_server

ALIAS = "bandit-arm"
IDS = [1001, 1002, 1003, 1004, 1005]


@pytest.fixture
def challenger(feast_settings, champion):
    client = connect(feast_settings)
    version = register_logistic(feast_settings)
    client.set_registered_model_alias(feast_settings.model_name, ALIAS, version)
    yield version
    client.delete_registered_model_alias(feast_settings.model_name, ALIAS)
    log = redis.Redis.from_url(f"redis://{REDIS}")
    for key in log.scan_iter(match=f"dr:{open_store(feast_settings).project}:*", count=1000):
        log.delete(key)


def answer(http: httpx.Client, request_id: str | None = None) -> dict:
    body = {"driver_ids": IDS} | ({"request_id": request_id} if request_id else {})
    response = http.post("/inference", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def bandits_of_both_workers(url: str) -> dict[int, dict]:
    """/model's bandit per worker, each asked on a new connection until both answered."""
    seen: dict[int, dict] = {}
    for _ in range(60):
        model = httpx.get(f"{url}/model", timeout=10).json()
        seen[model["worker_pid"]] = model["bandit"]
        if len(seen) == 2:
            break
    return seen


@pytest.mark.slow
def test_outcomes_move_traffic_to_the_arm_whose_picks_complete(feast_settings, champion, challenger):
    env = {"ROUTING": "bandit", "BANDIT_ALIASES": ALIAS, "BANDIT_FLOOR": "0.05"}
    with (
        ranker_server(feast_settings, workers=2, extra_env=env) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        before = Counter(answer(http)["model"]["version"] for _ in range(200))
        assert set(before) == {champion.version, challenger} and min(before.values()) >= 40, before

        # The dispatch system reports: the challenger's picks complete their trips, the champion's do not.
        answers = [answer(http, uuid.uuid4().hex) for _ in range(300)]
        log = redis.Redis.from_url(f"redis://{REDIS}")
        project = open_store(feast_settings).project
        wait_for(lambda: log.exists(f"dr:{project}:p:{{{answers[-1]['request_id']}}}"), 5, "logged")
        events = [
            {
                "request_id": a["request_id"],
                "driver_id": a["best_driver_id"],
                "completed": a["model"]["version"] == challenger,
            }
            for a in answers
        ]
        for start in range(0, len(events), 100):
            assert http.post("/feedback", json=events[start : start + 100]).json()["recorded"] == 100

        # Both workers read the same posterior (once a second).
        def shared() -> bool:
            seen = bandits_of_both_workers(url)
            arms = [
                {a["version"]: (a["completed"], a["not_completed"]) for a in b.values()}
                for b in seen.values()
            ]
            return (
                len(seen) == 2
                and arms[0] == arms[1]
                and arms[0][challenger][0] > 0
                and arms[0][champion.version][1] > 0
            )

        wait_for(shared, 10, "both workers show the outcomes in their posterior")
        after = Counter(answer(http)["model"]["version"] for _ in range(300))
        print(f"before outcomes {dict(before)}; after {dict(after)}")
        assert after[challenger] >= 0.8 * 300, after
        assert after[champion.version] >= 5, after  # the floor: 5% per arm, about 15 of 300

        # A retried request keeps its arm, whatever the draw would say now.
        first = answers[0]
        assert answer(http, first["request_id"])["model"]["version"] == first["model"]["version"]
