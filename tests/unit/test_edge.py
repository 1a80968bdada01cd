"""The edge answering an API itself: what BentoML's handler would answer, in one middleware."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from driver_ranker.serving.edge import UNEXPECTED, HttpEdge, JsonApi
from driver_ranker.serving.keepalive import ConnectionRecycler
from driver_ranker.serving.request_log import annotate
from driver_ranker.serving.schemas import InferenceRequest, ModelRef


def edge(call, recycler=None) -> TestClient:
    """An edge answering POST /inference with `call`; anything else reaches an app that answers 404."""
    inner = Starlette()
    apis = {"/inference": lambda: JsonApi(InferenceRequest, call)}
    return TestClient(HttpEdge(inner, 4096, None, recycler=recycler, apis=apis, server="S/1"))


async def echo(driver_ids, request_id):
    annotate(request_id=request_id)
    return ModelRef(name=str(driver_ids), version="1", alias=request_id or "")


def test_the_api_gets_the_validated_fields_and_its_model_is_written_as_json(caplog):
    with edge(echo) as http, caplog.at_level("INFO", logger="driver_ranker.requests"):
        response = http.post("/inference", json={"driver_ids": [3, 1.0], "request_id": "r"})
    assert response.status_code == 200
    assert response.json() == {"name": "[3, 1]", "version": "1", "alias": "r"}
    assert response.headers["content-type"] == "application/json" and response.headers["server"] == "S/1"
    line = json.loads(caplog.records[-1].getMessage())
    assert line["status"] == 200 and line["request_id"] == "r" and line["path"] == "/inference"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"driver_ids": ["x"]}', "driver_ids[0]: Input should be a valid integer"),
        (b"", "driver_ids: Field required"),
        (b"{", "the body is not valid JSON"),
        (b"[1]", "the body: Input should be an object (send a JSON object with driver_ids)"),
    ],
)
def test_invalid_bodies_get_400_naming_the_field(body, error):
    with edge(echo) as http:
        response = http.post("/inference", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"].startswith(error)


def test_a_response_from_the_api_passes_as_it_is_and_a_failure_is_a_500_without_details():
    async def unavailable(driver_ids, request_id):
        return JSONResponse({"error": "down"}, status_code=503)

    async def broken(driver_ids, request_id):
        raise RuntimeError("secret internals")

    with edge(unavailable) as http:
        response = http.post("/inference", json={"driver_ids": [1]})
        assert response.status_code == 503 and response.json() == {"error": "down"}
        assert response.headers["server"] == "S/1"
    with edge(broken) as http:
        response = http.post("/inference", json={"driver_ids": [1]})
        assert response.status_code == 500 and response.json() == {"error": UNEXPECTED}


def test_other_methods_and_paths_reach_the_app():
    with edge(echo) as http:
        assert http.get("/inference").status_code == 404
        assert http.post("/other", json={}).status_code == 404


def test_a_recycled_connection_is_told_to_close():
    recycler = lambda: ConnectionRecycler(max_requests=2, max_age_s=60, workers=1)  # noqa: E731
    with edge(echo, recycler) as http:
        first = http.post("/inference", json={"driver_ids": [1]})
        second = http.post("/inference", json={"driver_ids": [1]})
    assert "connection" not in first.headers and second.headers["connection"] == "close"
