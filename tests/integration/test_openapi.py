"""The OpenAPI document the Swagger page at `/` shows (`/docs.json`): it describes driver-ranker
(not BentoML's README template, version "None"), groups every route, and documents every error
the service gives with its schema, and nothing it never gives."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from driver_ranker.config import Settings
from driver_ranker.serving.openapi import openapi_document

OPERATIONS = {
    ("/inference", "post"): "Ranking",
    ("/feedback", "post"): "Ranking",
    ("/model", "get"): "Model",
    ("/admin/reload", "post"): "Admin",
    ("/livez", "get"): "Probes and metrics",
    ("/healthz", "get"): "Probes and metrics",
    ("/readyz", "get"): "Probes and metrics",
    ("/metrics", "get"): "Probes and metrics",
}
ERROR = "#/components/schemas/ErrorAnswer"


@pytest.fixture(scope="module")
def document(client) -> dict:
    response = client.get("/docs.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    return response.json()


def test_the_document_describes_driver_ranker(document):
    info = document["info"]
    assert document["openapi"] == "3.1.0"
    assert info["title"] == "driver-ranker"
    assert info["version"] == importlib.metadata.version("driver-ranker") != "None"
    assert "contact" not in info  # BentoML's "BentoML Team"
    text = info["description"]
    assert text.startswith("# driver-ranker\n")  # the page's title: BentoML's CSS hides info.title
    assert "Machine Learning Service created with BentoML" not in text and "driver-ranker:dev" not in text
    for words in ("best driver for a trip", "POST /inference", "driver_ids", "request_id", "best_driver_id",
                  "unknown_driver_ids", "stale_driver_ids", "400", "401", "413", "415", "429", "503"):  # fmt: skip
        assert words in text, words


def test_every_route_is_in_a_named_group(document):
    operations = {
        (path, method): op for path, item in document["paths"].items() for method, op in item.items()
    }
    assert {key: op["tags"] for key, op in operations.items()} == {k: [tag] for k, tag in OPERATIONS.items()}
    assert [tag["name"] for tag in document["tags"]] == list(dict.fromkeys(OPERATIONS.values()))
    assert all(tag["description"] for tag in document["tags"])
    assert all(op["summary"] and op["responses"] for op in operations.values())
    assert list(document["paths"])[:4] == ["/inference", "/feedback", "/model", "/admin/reload"]


def test_every_error_is_documented_with_its_schema(document):
    inference = document["paths"]["/inference"]["post"]["responses"]
    admin = document["paths"]["/admin/reload"]["post"]["responses"]
    assert set(inference) == {"200", "400", "401", "413", "415", "429", "503", "504"}
    assert {"401", "404", "429"} <= set(admin)
    for status, answer in [*inference.items(), *admin.items()]:
        if status != "200":
            assert answer["content"] == {"application/json": {"schema": {"$ref": ERROR}}}, status
            assert answer["description"], status
    schemas = document["components"]["schemas"]
    assert schemas["ErrorAnswer"]["required"] == ["error"]
    assert schemas["ErrorAnswer"]["properties"]["error"]["type"] == "string"
    assert document["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["text/plain"]


def test_the_request_and_the_answer_are_the_services_models(document):
    operation = document["paths"]["/inference"]["post"]
    assert operation["requestBody"]["required"] is True
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/InferenceRequest"} and body["example"]
    schemas = document["components"]["schemas"]
    assert schemas["InferenceRequest"]["required"] == ["driver_ids"]
    answer = schemas["InferenceResponse"]
    assert "stale_driver_ids" in answer["required"]
    assert "ttl" in answer["properties"]["stale_driver_ids"]["description"]
    assert {"type": "null"} in answer["properties"]["best_driver_id"]["anyOf"]  # 3.1: null is a type
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/InferenceResponse"
    )


def test_nothing_the_service_never_answers(document, client):
    text = json.dumps(document)
    assert "HTTPValidationError" not in text and "ValidationError" not in text and '"422"' not in text
    assert not {"InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse"} & set(
        document["components"]["schemas"]
    )
    # Without API_KEY and ADMIN_TOKEN (this server), no operation claims to need credentials.
    assert not [op for item in document["paths"].values() for op in item.values() if "security" in op]
    assert "securitySchemes" not in document["components"]  # no "Authorize" button for nothing
    # The mounted FastAPI app serves no docs of its own; BentoML's Swagger page loads ours.
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 404, path
    page = client.get("/")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert 'url: "./docs.json"' in client.get("/static_content/swagger-initializer.js").text


def test_the_documented_errors_are_the_ones_answered(client):
    admin_off = client.post("/admin/reload")
    assert admin_off.status_code == 404 and "ADMIN_TOKEN" in admin_off.json()["error"]
    not_json = client.post("/inference", content=b"driver_ids=1001", headers={"content-type": "text/plain"})
    assert not_json.status_code == 415 and set(not_json.json()) == {"error"}
    bad = client.post("/inference", json={"driver_ids": [1001, 1.5]})
    assert bad.status_code == 400 and bad.json() == {
        "error": "driver_ids[1]: Input should be a valid integer"
    }


def test_credentials_are_declared_where_the_settings_require_them():
    import service  # the main process' import: Feast and MLflow are not loaded

    generated = service.DriverRanker.openapi_spec.asdict()
    guarded = openapi_document(generated, Settings(api_key="k", admin_token="t"))
    assert guarded["paths"]["/inference"]["post"]["security"] == [{"ApiKey": []}, {"ApiKeyBearer": []}]
    assert guarded["paths"]["/admin/reload"]["post"]["security"] == [{"AdminToken": []}]
    schemes = guarded["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "API_KEY.",
    }
    assert schemes["AdminToken"]["scheme"] == schemes["ApiKeyBearer"]["scheme"] == "bearer"
    open_ = openapi_document(generated, Settings(api_key=None, admin_token=None))
    assert not [op for item in open_["paths"].values() for op in item.values() if "security" in op]
    assert "securitySchemes" not in open_["components"]
    assert openapi_document(generated, Settings(), bento="driver-ranker:abc123")["info"]["description"].count(
        "driver-ranker:abc123"
    )
