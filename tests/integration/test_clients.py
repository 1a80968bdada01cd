"""BentoML's own clients, as its documentation shows them, against the served ranker:
`bentoml.SyncHTTPClient(url, token=API_KEY).inference(driver_ids=[...])` and the same awaited on
`bentoml.AsyncHTTPClient`. They answer what plain HTTP answers, and raise BentoML's errors with the
service's own message on a 400, a 401 and a 503."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable

from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, ranker_server, redis_server, repo_settings

API_KEY = "client-api-key"
DRIVERS = [1003, 1001, 1002, 424242, 1005, 1004]


@pytest.fixture(scope="module")
def served(tmp_path_factory, feast_settings, champion) -> Iterator[tuple[str, object]]:
    """The ranker with API_KEY set, on a redis-server of this module's own (a test freezes it), and
    the session's registry; yields its URL and the redis-server's process."""
    with redis_server() as (redis_proc, address):
        spec = DataSpec(n_drivers=50, days=2, n_orders=200)
        repo = make_feast_repo(tmp_path_factory.mktemp("clients"), spec, redis=address)
        settings = repo_settings(repo, redis=address, mlflow_dir=feast_settings.mlflow_artifact_root.parent)
        with ranker_server(settings, workers=1, extra_env={"API_KEY": API_KEY}) as url:
            yield url, redis_proc


def plain_http(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/inference", json=body, headers={"X-API-Key": API_KEY}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def assert_a_ranking(answer: dict) -> None:
    scores = [s["score"] for s in answer["scores"]]
    assert scores and scores == sorted(scores, reverse=True)
    assert answer["best_driver_id"] == answer["scores"][0]["driver_id"]
    assert answer["unknown_driver_ids"] == [424242] and answer["stale_driver_ids"] == []


def test_sync_client_answers_what_plain_http_answers(served):
    url, _ = served
    with bentoml.SyncHTTPClient(url, token=API_KEY) as client:
        answer = client.inference(driver_ids=DRIVERS, request_id="sync-1")
        positional = client.inference(DRIVERS)  # driver_ids is the first field
    assert answer == plain_http(url, {"driver_ids": DRIVERS, "request_id": "sync-1"})
    assert_a_ranking(answer)
    assert positional["best_driver_id"] == answer["best_driver_id"] and positional["request_id"]


def test_async_client_answers_what_plain_http_answers(served):
    url, _ = served

    async def ask() -> list[dict]:
        async with bentoml.AsyncHTTPClient(url, token=API_KEY) as client:
            return await asyncio.gather(
                *(client.inference(driver_ids=DRIVERS, request_id=f"async-{i}") for i in range(4))
            )

    answers = asyncio.run(ask())
    assert [a["request_id"] for a in answers] == [f"async-{i}" for i in range(4)]
    expected = plain_http(url, {"driver_ids": DRIVERS, "request_id": "async-0"})
    assert answers[0] == expected
    assert all(a["scores"] == expected["scores"] for a in answers)
    assert_a_ranking(answers[0])


def test_client_errors_carry_the_services_message(served):
    url, redis_proc = served
    with bentoml.SyncHTTPClient(url, token=API_KEY) as client:
        with pytest.raises(InvalidArgument) as invalid:
            client.inference(driver_ids=[1001, "1002"])
        assert invalid.value.error_code == 400
        assert json.loads(str(invalid.value)) == {"error": "driver_ids[1]: Input should be a valid integer"}

        redis_proc.send_signal(signal.SIGSTOP)  # the online store stops answering
        try:
            with pytest.raises(ServiceUnavailable) as unavailable:
                client.inference(driver_ids=DRIVERS)
        finally:
            redis_proc.send_signal(signal.SIGCONT)
        assert (
            unavailable.value.error_code == 503
            and "retry shortly" in json.loads(str(unavailable.value))["error"]
        )
        assert_a_ranking(client.inference(driver_ids=DRIVERS))  # and back, with the same client

    with bentoml.SyncHTTPClient(url) as keyless, pytest.raises(BentoMLException) as refused:
        keyless.inference(driver_ids=DRIVERS)
    assert refused.value.error_code == 401 and "X-API-Key" in json.loads(str(refused.value))["error"]
