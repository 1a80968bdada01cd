"""The compose stack for real: the image `make containerize` builds, `docker compose up` of
deployment/docker-compose.yml with its .env, and requests through the ports it publishes on
127.0.0.1 (and only those; what is not published, a ranker replica's own /metrics and HAProxy's
stats page, is read from inside its container with `docker compose exec`).

`make test-compose` runs this folder; `make test` leaves it out (pyproject's addopts). It needs a
Docker engine with Compose and BuildKit, and the Redis on 127.0.0.1:6379 that the host's tools use.
Everything runs as from the shell of a user who has just run `make train` against a local registry:
MLFLOW_TRACKING_URI, REDIS_CONNECTION_STRING and friends are exported for the host's tools, and the
containers must not see them. The stack runs as a compose project of its own, on free ports, and
`docker compose down -v` removes it whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.jobs.data import DataSpec
from driver_ranker.ops.processes import free_port
from tests.support.stack import make_feast_repo, repo_settings, teardown_repo

COMPOSE_FILE = PROJECT_ROOT / "deployment" / "docker-compose.yml"
IMAGE = "driver-ranker:latest"  # what `make containerize` tags, and deployment/.env's RANKER_IMAGE
REPORT: dict[str, str] = {}
"""What the run measured, printed at the end (and written to artifacts/compose/report.json)."""

T = TypeVar("T")


def run(
    command: list[str], env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT, timeout: float = 900
):
    """A command that must succeed; its output's tail is the failure message otherwise."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def timed(what: str, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = run(command, **kwargs)
    REPORT[what] = f"{time.monotonic() - started:.1f} s"
    return result


def wait_until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """The first truthy value of `check()`; fails after `timeout` seconds, saying what it waited for."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last error: {last})")


@pytest.fixture(scope="session", autouse=True)
def _docker() -> None:
    for command in (["docker", "info"], ["docker", "compose", "version"], ["docker", "buildx", "version"]):
        try:
            subprocess.run(command, capture_output=True, check=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.exit(
                f"make test-compose needs a Docker engine with Compose and BuildKit: `{' '.join(command)}` "
                f"fails ({exc})",
                returncode=2,
            )


@dataclass
class HostShell:
    """A user's shell: the host's tools set up for a local registry and the local Redis."""

    env: dict[str, str]
    settings: Settings

    def make(self, *targets: str, timeout: float = 900, **variables: str) -> subprocess.CompletedProcess:
        return run(["make", "--no-print-directory", *targets], env=self.env | variables, timeout=timeout)


@pytest.fixture(scope="session")
def host_shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostShell]:
    """The issue's broken case: `make train` ran with MLFLOW_TRACKING_URI exported for a SQLite
    registry on the host, and the same shell runs `make containerize` and `docker compose up`.

    The demo data is the default DataSpec, as compose's init job writes it, in a Feast repo of the
    test's own (its own project in the host's Redis)."""
    root = tmp_path_factory.mktemp("host-shell")
    repo = make_feast_repo(root, DataSpec())
    settings = repo_settings(repo)
    env = os.environ | {
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_ARTIFACT_ROOT": str(settings.mlflow_artifact_root),
        "REDIS_CONNECTION_STRING": settings.redis_connection_string,
        "FEAST_REPO_PATH": str(repo),
        "WORKERS": "1",
        # The Bento and its model go to a BentoML home of the run's own, not the user's.
        "BENTOML_HOME": str(root / "bentoml"),
    }
    yield HostShell(env, settings)
    teardown_repo(settings)


@pytest.fixture(scope="session")
def image(host_shell: HostShell) -> str:
    """`make train` (the local champion), then `make containerize`, as a user does."""
    trained = host_shell.make("train")
    assert "is the new champion" in trained.stdout, trained.stdout
    timed(
        "make containerize (bento + image)",
        ["make", "--no-print-directory", "containerize"],
        env=host_shell.env,
    )
    size = run(["docker", "image", "inspect", IMAGE, "--format", "{{.Size}}"]).stdout.strip()
    REPORT["image size"] = f"{int(size) / 1e6:.0f} MB"
    return IMAGE


@dataclass
class Stack:
    """One compose project of deployment/docker-compose.yml, driven as a user drives it."""

    project: str
    env: dict[str, str]
    ports: dict[str, int]

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        result = subprocess.run(
            command, cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`docker compose {' '.join(args)}` exited with {result.returncode}:\n{result.stderr[-3000:]}\n"
                f"--- logs ---\n{self.logs()}"
            )
        return result

    def logs(self, *services: str, tail: int = 40) -> str:
        command = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), "logs", "--no-color"]
        result = subprocess.run(
            [*command, "--tail", str(tail), *services],
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        return result.stdout[-6000:]

    def url(self, service: str) -> str:
        """A published port's URL; `ranker` is RANKER_PORT, the ranker API that lb publishes."""
        return f"http://127.0.0.1:{self.ports[service]}"

    def services(self) -> dict[str, dict[str, Any]]:
        """`docker compose ps -a`: service -> its container's state."""
        out = self.compose("ps", "-a", "--format", "json").stdout.strip()
        rows = (
            json.loads(out)
            if out.startswith("[")
            else [json.loads(line) for line in out.splitlines() if line]
        )
        return {row["Service"]: row for row in rows}

    def container(self, service: str) -> dict[str, Any]:
        """`docker inspect` of the service's container."""
        (container_id,) = self.compose("ps", "-a", "-q", service).stdout.split()
        return json.loads(run(["docker", "inspect", container_id]).stdout)[0]

    def replicas(self, service: str) -> list[dict[str, Any]]:
        """`docker inspect` of each of the service's containers (`--scale`), by replica number."""
        ids = self.compose("ps", "-a", "-q", service).stdout.split()
        found = json.loads(run(["docker", "inspect", *ids]).stdout) if ids else []
        return sorted(found, key=lambda c: int(c["Config"]["Labels"]["com.docker.compose.container-number"]))

    def fetch(self, service: str, url: str, index: int = 1) -> str:
        """GET `url` from inside a container of the service (its python), for ports not published:
        a ranker replica's own /metrics, HAProxy's stats page."""
        script = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
        return self.compose("exec", "-T", "--index", str(index), service, "python", "-c", script).stdout

    def infer(
        self, driver_ids: list[int], request_id: str = "compose-test", timeout: float = 5
    ) -> httpx.Response:
        return httpx.post(
            f"{self.url('ranker')}/inference",
            json={"request_id": request_id, "driver_ids": driver_ids},
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def stack(image: str, host_shell: HostShell) -> Iterator[Stack]:
    """`DEMO_DATA=true docker compose up -d --wait`, from the user's shell, on free loopback ports;
    `docker compose down -v` at the end, whatever happened. The ranker API's port is lb's."""
    ports = {"ranker": free_port(), "mlflow": free_port(), "prometheus": free_port(), "grafana": free_port()}
    env = host_shell.env | {
        "RANKER_PORT": str(ports["ranker"]),
        "MLFLOW_PORT": str(ports["mlflow"]),
        "PROMETHEUS_PORT": str(ports["prometheus"]),
        "GRAFANA_PORT": str(ports["grafana"]),
        "DEMO_DATA": "true",  # the README's way to a demo champion on a fresh stack
    }
    stack = Stack(f"driver-ranker-test-{uuid.uuid4().hex[:8]}", env, ports)
    try:
        # What `up` builds first on a fresh machine (the MLflow server's and HAProxy's images),
        # timed on its own.
        started = time.monotonic()
        stack.compose("build")
        REPORT["docker compose build (the MLflow server and lb images)"] = (
            f"{time.monotonic() - started:.1f} s"
        )
        started = time.monotonic()
        stack.compose("up", "-d", "--wait")
        REPORT["docker compose up -d --wait, to a healthy ranker behind lb"] = (
            f"{time.monotonic() - started:.1f} s"
        )
        REPORT["of which the init job"] = (
            f"{seconds_between(stack.container('init'), 'StartedAt', 'FinishedAt'):.1f} s"
        )
        yield stack
    finally:
        # Also the images compose built under this project's name (their layers stay cached).
        stack.compose(
            "--profile", "monitoring", "down", "-v", "--remove-orphans", "--rmi", "local", check=False
        )


def seconds_between(container: dict[str, Any], start: str, end: str) -> float:
    """Seconds between two of a container's State timestamps (Docker writes nanoseconds)."""

    def parse(stamp: str) -> datetime:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")

    return (parse(container["State"][end]) - parse(container["State"][start])).total_seconds()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("driver-ranker on compose: measured")
    for what, value in REPORT.items():
        terminalreporter.write_line(f"{what}: {value}")
    out = PROJECT_ROOT / "artifacts" / "compose"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(REPORT, indent=2) + "\n")
