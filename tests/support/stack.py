"""Real components for tests: a Feast repo in a temporary folder, a redis-server, a BentoML server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from driver_ranker.config import PROJECT_ROOT, Settings
from driver_ranker.features.store import apply, materialize
from driver_ranker.jobs.data import DataSpec, write
from driver_ranker.ops.processes import free_port, port_open, serve_until_ready, stop_process_group, wait_for

REDIS = "127.0.0.1:6379"


def make_feast_repo(root: Path, spec: DataSpec, redis: str = REDIS, **settings: object) -> Path:
    """A copy of feature_repo/ under `root` with its own Feast project name (so its Redis keys are
    its own), generated data, applied and materialized (`settings`: e.g. another `redis_type`)."""
    repo = copy_feature_repo(root)
    write(spec, repo / "data")
    materialize(apply(repo_settings(repo, redis, **settings)))
    return repo


def copy_feature_repo(root: Path, data: Path | None = None) -> Path:
    """feature_repo/'s definitions and yamls under `root`, with a Feast project name of their own,
    and the Parquet files of `data` (another repo's data/) when given; not applied."""
    repo = root / "feature_repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "feature_repo" / "driver_repo.py", repo)
    project = f"t_{uuid.uuid4().hex[:10]}"
    for name in ("feature_store.yaml", "feature_store.sqlite.yaml", "feature_store.spark.yaml"):
        yaml = (PROJECT_ROOT / "feature_repo" / name).read_text()
        (repo / name).write_text(yaml.replace("project: driver_ranker", f"project: {project}"))
    for parquet in sorted(data.glob("*.parquet")) if data else ():
        shutil.copy(parquet, repo / "data")
    return repo


def repo_settings(
    repo: Path, redis: str = REDIS, mlflow_dir: Path | None = None, **settings: object
) -> Settings:
    mlflow_dir = mlflow_dir or repo.parent / "mlflow"
    return Settings(
        feast_repo_path=repo,
        redis_connection_string=redis,
        mlflow_tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        mlflow_artifact_root=mlflow_dir / "artifacts",
        **settings,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    registry = (
        {"FEAST_REGISTRY": settings.feast_registry.get_secret_value()} if settings.feast_registry else {}
    )
    return registry | {
        "FEAST_REPO_PATH": str(settings.feast_repo_path),
        "REDIS_CONNECTION_STRING": settings.redis_connection_string,
        "REDIS_TYPE": settings.redis_type,
        "REDIS_SENTINEL_MASTER": settings.redis_sentinel_master,
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLFLOW_ARTIFACT_ROOT": str(settings.mlflow_artifact_root),
        "ONLINE_STORE": settings.online_store,
        "OFFLINE_STORE": settings.offline_store,
    }


def write_aged_statistics(settings: Settings, ages: dict[int, timedelta]) -> tuple[pd.DataFrame, float]:
    """Writes one row of statistics per driver, as of now minus its age, through Feast; returns the
    rows by driver id and the time written (epoch seconds)."""
    from driver_ranker.features.store import open_store

    now = datetime.now(UTC)
    frame = pd.DataFrame(
        {
            "driver_id": list(ages),
            "event_timestamp": [now - age for age in ages.values()],
            "created": now,
            "conv_rate": np.linspace(0.1, 0.6, len(ages)).astype(np.float32),
            "acc_rate": np.linspace(0.9, 0.4, len(ages)).astype(np.float32),
            "avg_daily_trips": np.arange(10, 10 + len(ages)),
        }
    )
    open_store(settings).write_to_online_store("driver_stats", frame)
    return frame.set_index("driver_id"), now.timestamp()


def teardown_repo(settings: Settings) -> None:
    """Removes what the repo wrote to Redis (Feast deletes its project's keys) and its files."""
    from driver_ranker.features.store import open_store

    open_store(settings).teardown()


@contextmanager
def redis_server(
    port: int | None = None, password: str | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """A redis-server of the test's own on a free port; stopped (and forgotten) at the end."""
    port = port or free_port()
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *auth,
        ],
        stdout=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    wait_for_port(port, proc)
    try:
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(10)


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    wait_for(lambda: port_open(port), timeout, f"something listens on {port}", proc=proc)


def start_ranker(
    settings: Settings, workers: int = 1, extra_env: dict[str, str] | None = None, ready_timeout: float = 120
) -> tuple[subprocess.Popen, str]:
    """`bentoml serve service:DriverRanker` as a subprocess on a free port, once /readyz says 200.

    Its output goes to ranker-<port>.log beside the Feast repo.
    """
    port = free_port()
    log_path = settings.feast_repo_path.parent / f"ranker-{port}.log"
    # BentoML empties $BENTOML_HOME/prometheus_multiproc_dir when a server starts: servers that
    # share a home wipe each other's metrics. Each test server gets its own (and an empty model store).
    home = {"BENTOML_HOME": str(settings.feast_repo_path.parent / f"bentoml-{port}")}
    env = (
        os.environ
        | settings_env(settings)
        | home
        | {"WORKERS": str(workers), "PORT": str(port)}
        | (extra_env or {})
    )
    proc = serve_until_ready("service:DriverRanker", port, env, log_path, ready_timeout)
    return proc, f"http://127.0.0.1:{port}"


@contextmanager
def ranker_server(
    settings: Settings, workers: int = 1, extra_env: dict[str, str] | None = None, ready_timeout: float = 120
) -> Iterator[str]:
    """The ranker for the duration of a `with`; yields its base URL."""
    proc, url = start_ranker(settings, workers, extra_env, ready_timeout)
    try:
        yield url
    finally:
        stop_process_group(proc, grace_s=20)


def use_definitions_of(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Feast imports a repo's definitions by module name, from the first folder on sys.path that
    has one (it appends each repo it applies): without this, an edited driver_repo.py would lose to
    the copy an earlier test applied."""
    monkeypatch.delitem(sys.modules, "driver_repo", raising=False)
    monkeypatch.syspath_prepend(str(repo))
