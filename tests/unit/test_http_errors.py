import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from driver_ranker.serving.admin import bearer_token
from driver_ranker.serving.edge import HttpEdge
from driver_ranker.serving.http_errors import validation_message
from driver_ranker.serving.schemas import whole_number


def test_field_errors_name_the_field():
    detail = [
        {"type": "int_type", "loc": ["driver_ids", 0], "msg": "Input should be a valid integer"},
        {"type": "missing", "loc": ["request_id"], "msg": "Field required"},
    ]
    assert validation_message(detail) == (
        "driver_ids[0]: Input should be a valid integer; request_id: Field required"
    )


def test_body_errors_say_what_to_send():
    assert "not valid JSON" in validation_message([{"type": "json_invalid", "loc": [], "msg": "x"}])
    message = validation_message([{"type": "model_type", "loc": [], "msg": "Input should be an object"}])
    assert "JSON object with driver_ids" in message


def guarded(api_key: str | None) -> TestClient:
    """The edge, answering no API itself, in front of an app that answers 200 with the body it read."""

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"read": len(await request.body())})

    echo_app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app = HttpEdge(echo_app, max_body_bytes=1024, api_key=SecretStr(api_key) if api_key else None)
    return TestClient(app)


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 200),
        ("application/json", 200),
        ("Application/JSON; charset=utf-8", 200),
        ("text/plain", 415),
        ("multipart/form-data", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/vnd.bentoml+pickle", 415),
    ],
)
def test_inference_bodies_must_be_json(content_type, status):
    headers = {"content-type": content_type} if content_type else {}
    with guarded(None) as http:
        response = http.post("/inference", content=b'{"driver_ids": [1]}', headers=headers)
        assert response.status_code == status
        if status == 415:
            assert response.json() == {"error": "send the body as JSON, with Content-Type: application/json"}
        # Other routes read no JSON body: their Content-Type is theirs to judge.
        assert http.post("/admin/reload", content=b"x", headers=headers).status_code == 200


def test_the_api_key_is_taken_from_x_api_key_or_as_a_bearer_token():
    with guarded("k-1") as http:
        post = lambda headers: http.post("/inference", json={"driver_ids": [1]}, headers=headers).status_code  # noqa: E731
        assert post({"X-API-Key": "k-1"}) == 200
        assert post({"Authorization": "Bearer k-1"}) == post({"Authorization": "bearer  k-1 "}) == 200
        assert post({}) == post({"X-API-Key": "k-2"}) == post({"Authorization": "Bearer k-2"}) == 401
        assert (
            post({"Authorization": "Basic k-1"})
            == post({"X-API-Key": "k-2", "Authorization": "Bearer k-1"})
            == 401
        )
        refused = http.post("/inference", content=b"x", headers={"content-type": "text/plain"})
        assert refused.status_code == 401  # the key first: nothing else is said without it
        assert http.get("/model").status_code == 200


def test_bearer_token():
    assert bearer_token("Bearer abc") == bearer_token("bearer abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1001.0, 1001), (1e3, 1000), (1001, 1001), (1001.5, 1001.5), (True, True), ("1001", "1001")],
)
def test_whole_numbers_are_integers_as_json_schema_says(value, expected):
    result = whole_number(value)
    assert result == expected and type(result) is type(expected)
