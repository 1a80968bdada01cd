"""The service over real HTTP: `bentoml serve` on a free port, real Redis, a real MLflow registry."""

import json
import re
import uuid

import mlflow
import pandas as pd
import pytest

from driver_ranker.features.store import FEATURE_SERVICE, open_store
from driver_ranker.model.registry import connect
from driver_ranker.ops.processes import wait_for
from driver_ranker.serving.schemas import EXAMPLE_REQUEST
from tests.support.metrics import served_versions

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]


def independent_scores(settings, version: str, ids: list[int]) -> dict[int, float]:
    """Feast's SDK plus the model as MLflow loads it: what the answer must equal."""
    store = open_store(settings)
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{"driver_id": i} for i in ids]
    ).to_dict()
    frame = pd.DataFrame(online).dropna()
    connect(settings)  # tracking and registry URIs: another test may have pointed them elsewhere
    model = mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")
    proba = model.predict_proba(frame[FEATURES].to_numpy())[:, 1]
    return dict(zip(frame.driver_id.tolist(), proba.tolist(), strict=True))


def test_example_request_ranks_like_an_independent_computation(client, feast_settings, champion):
    response = client.post("/inference", json=EXAMPLE_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = independent_scores(feast_settings, champion.version, EXAMPLE_REQUEST["driver_ids"])
    assert body["request_id"] == EXAMPLE_REQUEST["request_id"]
    assert body["model"] == {"name": "driver-ranker", "version": champion.version, "alias": "champion"}
    assert {s["driver_id"]: s["score"] for s in body["scores"]} == pytest.approx(expected, rel=1e-9)
    # Best first: the order of the independent scores (equal to within 1e-12, not to the last bit).
    assert [s["driver_id"] for s in body["scores"]] == sorted(expected, key=expected.get, reverse=True)
    assert body["best_driver_id"] == max(expected, key=expected.get)
    assert body["unknown_driver_ids"] == []


def test_unknown_and_duplicate_ids(client):
    body = client.post("/inference", json={"driver_ids": [1003, 99999, 1003, 1001, 99999, 5]}).json()
    assert body["unknown_driver_ids"] == [99999, 5]
    assert sorted(s["driver_id"] for s in body["scores"]) == [1001, 1003]
    assert body["request_id"]  # generated when absent


def test_no_known_driver_gives_null_best(client):
    response = client.post("/inference", json={"request_id": "r", "driver_ids": [1, 2]})
    assert response.status_code == 200
    assert response.json() | {"model": None} == {
        "request_id": "r",
        "best_driver_id": None,
        "scores": [],
        "unknown_driver_ids": [1, 2],
        "stale_driver_ids": [],
        "model": None,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"request_id": "x"}', "driver_ids: Field required"),
        (b'{"driver_ids": []}', "driver_ids: List should have at least 1 item"),
        (b'{"driver_ids": [1001, "1002"]}', "driver_ids[1]: Input should be a valid integer"),
        (b'{"driver_ids": [1.5]}', "driver_ids[0]: Input should be a valid integer"),
        (b'{"driver_ids": [true]}', "driver_ids[0]: Input should be a valid integer"),
        (b'{"driver_ids": [-1]}', "driver_ids[0]: Input should be greater than or equal to 0"),
        (b'{"driver_ids": [99999999999999999999]}', "driver_ids[0]: Input should be less than or equal"),
        (b'{"driver_ids": 1001}', "driver_ids: Input should be a valid array"),
        (b"[1001]", "send a JSON object with driver_ids"),
        (b"", "driver_ids: Field required"),
        (("{" + '"driver_ids": [' + ",".join(["1001"] * 1001) + "]}").encode(), "at most 1000 items"),
    ],
)
def test_bad_bodies_get_400_with_a_message(client, body, message):
    response = client.post("/inference", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_model_endpoint_describes_the_served_version(client, champion):
    info = client.get("/model").json()
    assert info["version"] == champion.version and info["alias"] == "champion"
    assert info["feature_names"] == FEATURES and info["feature_service"] == FEATURE_SERVICE
    assert info["run_id"] and info["loaded_at"]
    assert (info["online_store"], info["feature_reader"]) == ("Redis", "redis-direct")
    assert info["source"] == "registry" and info["worker_pid"] > 0 and info["scorer"] == "folded-linear"
    assert info["canary"] is None and info["shadow"] is None and info["refused"] == {}
    assert info["registry_checked_at"] and info["registry_error"] is None


def test_a_worker_scores_without_loading_scikit_learn(client, champion):
    """The champion's linear scorer comes from its metadata: scikit-learn's compiled modules (and
    skops's list of every estimator) never enter the worker."""
    pid = client.get("/model").json()["worker_pid"]
    assert client.post("/inference", json=EXAMPLE_REQUEST).status_code == 200
    with open(f"/proc/{pid}/maps") as maps:
        loaded = {line.split()[-1] for line in maps if "site-packages/" in line}
    assert any("/numpy/" in path for path in loaded)  # the check sees the worker's own libraries
    assert not [path for path in loaded if "/sklearn/" in path]


def drivers_counted(metrics: str) -> float:
    """driver_ranker_drivers_total summed over the workers' series."""
    return sum(
        float(v) for v in re.findall(r"^driver_ranker_drivers_total(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    )


def test_probes_and_metrics(client, champion):
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    before = drivers_counted(client.get("/metrics").text)
    client.post("/inference", json={"driver_ids": [1001, 424242, 1001]})
    metrics = client.get("/metrics").text
    assert drivers_counted(metrics) == before + 2  # the alerts' denominator: each driver once
    for name in (
        f'driver_ranker_requests_total{{outcome="ok",version="{champion.version}"}}',
        "driver_ranker_unknown_drivers_total",
        "driver_ranker_best_score_bucket",
        "driver_ranker_feature_read_seconds_bucket",
        "bentoml_service_request_total",
    ):
        assert name in metrics, name
    # One gauge per worker process: the version each worker serves.
    served = served_versions(metrics)
    assert served and set(served.values()) == {champion.version}


def test_swagger_document_carries_a_working_example(client):
    spec = client.get("/docs.json").json()
    operation = spec["paths"]["/inference"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    example = schema["example"]
    assert example == EXAMPLE_REQUEST
    assert client.post("/inference", json=example).status_code == 200
    assert client.get("/").status_code == 200


def request_log_lines(settings, ranker_url: str) -> list[dict]:
    log = settings.feast_repo_path.parent / f"ranker-{ranker_url.rsplit(':', 1)[1]}.log"
    marker = "[driver_ranker.requests] "
    return [json.loads(line.split(marker, 1)[1]) for line in log.read_text().splitlines() if marker in line]


def test_every_request_gets_one_log_line_with_its_request_id(client, feast_settings, ranker_url, champion):
    request_id = f"log-{uuid.uuid4().hex}"
    missing = f"/nothing-{uuid.uuid4().hex}"
    assert client.post(
        "/inference", json={"request_id": request_id, "driver_ids": [1001, 1002, 1001]}
    ).is_success
    assert (
        client.post("/inference", content=b"driver_ids=1", headers={"content-type": "text/plain"}).status_code
        == 415
    )
    assert client.get(missing).status_code == 404
    assert client.get("/readyz").status_code == 200

    def logged() -> list[dict]:
        lines = request_log_lines(feast_settings, ranker_url)
        return [line for line in lines if line.get("request_id") == request_id or line["path"] == missing]

    wait_for(lambda: len(logged()) >= 2, 5, "the request log lines")
    answered, not_found = sorted(logged(), key=lambda line: line["path"] == missing)
    assert answered == answered | {
        "method": "POST", "path": "/inference", "status": 200, "request_id": request_id,
        "model_version": champion.version, "best_driver_id": answered["best_driver_id"], "drivers": 2,
        "unknown": 0, "stale": 0,
    }  # fmt: skip
    assert answered["best_driver_id"] in (1001, 1002) and answered["latency_ms"] > 0
    assert not_found["status"] == 404 and not_found["method"] == "GET"
    lines = request_log_lines(feast_settings, ranker_url)
    assert any(line["status"] == 415 and line["path"] == "/inference" for line in lines)
    assert not any(line["path"] == "/readyz" for line in lines)  # probes are not logged
    log = (feast_settings.feast_repo_path.parent / f"ranker-{ranker_url.rsplit(':', 1)[1]}.log").read_text()
    assert "method=POST,path=/inference" not in log  # BentoML's access log is off
