"""The prediction log and POST /feedback, on the real server (2 workers) and the real Redis: every
answer is logged with its model, version and role; an outcome joins the right prediction; a repeat
is harmless, a contradiction refused, an unknown request 404 with nothing recorded; a restarted
(or another) ranker accepts feedback for what the first one answered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from driver_ranker.features.store import open_store
from driver_ranker.ops.processes import wait_for
from tests.support.stack import REDIS, ranker_server

IDS = [1001, 1002, 1003, 1004, 1005]


@pytest.fixture(scope="module")
def log_keys(feast_settings) -> Iterator[tuple[redis.Redis, str]]:
    """A client of the test Redis and the log's key prefix; the log's keys are removed afterwards."""
    client = redis.Redis.from_url(f"redis://{REDIS}")
    prefix = f"dr:{open_store(feast_settings).project}"
    yield client, prefix
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


def answered(client: httpx.Client, log: redis.Redis, prefix: str) -> dict:
    """An answer whose prediction the log holds (it is written just after the answer)."""
    answer = client.post("/inference", json={"driver_ids": IDS, "request_id": uuid.uuid4().hex}).json()
    wait_for(lambda: log.exists(f"{prefix}:p:{{{answer['request_id']}}}"), 5, "the prediction logged")
    return answer


@pytest.mark.slow
def test_every_answer_is_logged_with_its_model(client, log_keys):
    log, prefix = log_keys
    answer = answered(client, log, prefix)
    stored = {
        k.decode(): v.decode() for k, v in log.hgetall(f"{prefix}:p:{{{answer['request_id']}}}").items()
    }
    assert stored["version"] == answer["model"]["version"] and stored["model"] == answer["model"]["name"]
    assert stored["role"] == "champion" and stored["drivers"] == "5"
    assert int(stored["best_driver_id"]) == answer["best_driver_id"]
    assert float(stored["best_score"]) == pytest.approx(answer["scores"][0]["score"], rel=1e-12)
    assert 0 < log.ttl(f"{prefix}:p:{{{answer['request_id']}}}") <= 7 * 86400
    logged = [fields for _, fields in log.xrange(f"{prefix}:predictions")]
    assert {b"request_id": answer["request_id"].encode()}.items() <= next(
        f for f in logged if f[b"request_id"] == answer["request_id"].encode()
    ).items()


@pytest.mark.slow
def test_outcomes_join_their_prediction_once(client, log_keys):
    log, prefix = log_keys
    answer = answered(client, log, prefix)
    event = {"request_id": answer["request_id"], "driver_id": answer["best_driver_id"], "completed": True}
    first = client.post("/feedback", json=event)
    assert (first.status_code, first.json()) == (200, {"recorded": 1, "repeated": 0})
    again = client.post("/feedback", json=[event, event])
    assert (again.status_code, again.json()) == (200, {"recorded": 0, "repeated": 2})
    contradiction = client.post("/feedback", json=event | {"completed": False})
    assert contradiction.status_code == 409 and "recorded before" in contradiction.json()["error"]
    # The outcome is stored against that request and driver, and streamed once for the report.
    outcomes = log.hgetall(f"{prefix}:f:{{{answer['request_id']}}}")
    assert outcomes == {str(answer["best_driver_id"]).encode(): b"1"}
    streamed = [
        f for _, f in log.xrange(f"{prefix}:feedback") if f[b"request_id"] == answer["request_id"].encode()
    ]
    assert len(streamed) == 1 and streamed[0][b"completed"] == b"1"


@pytest.mark.slow
def test_an_unknown_request_is_404_and_nothing_of_the_body_is_recorded(client, log_keys):
    log, prefix = log_keys
    answer = answered(client, log, prefix)
    known = {"request_id": answer["request_id"], "driver_id": 1002, "completed": False}
    unknown = {"request_id": "never-answered", "driver_id": 1002, "completed": True}
    response = client.post("/feedback", json=[known, unknown])
    assert response.status_code == 404
    assert "never-answered" in response.json()["error"] and "nothing" in response.json()["error"]
    assert not log.exists(f"{prefix}:f:{{{answer['request_id']}}}")
    assert client.post("/feedback", json=known).json() == {"recorded": 1, "repeated": 0}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"request_id": "r", "driver_id": 1001}, "completed"),
        ({"request_id": "r", "driver_id": 1001, "completed": "yes"}, "completed"),
        ({"request_id": "r", "driver_id": "abc", "completed": True}, "driver_id"),
        ({"request_id": "", "driver_id": 1001, "completed": True}, "request_id"),
        ([], "at least 1 item"),
        ("completed", "request_id, driver_id and completed"),
    ],
)
def test_bad_feedback_is_400_naming_the_field(client, body, names):
    response = client.post("/feedback", json=body)
    assert response.status_code == 400, response.text
    assert names in response.json()["error"]


@pytest.mark.slow
def test_a_restarted_ranker_takes_feedback_for_what_the_first_answered(client, log_keys, feast_settings):
    log, prefix = log_keys
    answer = answered(client, log, prefix)
    with ranker_server(feast_settings, workers=1) as other:  # a restart, or another replica
        event = {"request_id": answer["request_id"], "driver_id": IDS[-1], "completed": True}
        response = httpx.post(f"{other}/feedback", json=event, timeout=10)
    assert (response.status_code, response.json()) == (200, {"recorded": 1, "repeated": 0})
