"""The compose deployment as local processes: Redis, an `mlflow server`, the init job, the ranker.

`python -m driver_ranker.ops.stack` (`make stack`) runs what deployment/docker-compose.yml runs, on
machines without Docker: the MLflow server keeps its runs in the local PostgreSQL when one answers
on 127.0.0.1:5432 (SQLite otherwise) and serves artifacts itself; training registers through it
over HTTP, and the ranker loads its champion from it over HTTP. It is a local demo, so the init step
runs with DEMO_DATA on (synthetic data and a champion) unless DEMO_DATA is set otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from driver_ranker.config import PROJECT_ROOT, get_settings

logger = logging.getLogger("driver_ranker.ops.stack")

# The Host headers the server accepts: the compose service name and the loopback names.
ALLOWED_HOSTS = "mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1,127.0.0.1:*"


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_ready(
    target: str, port: int, env: dict[str, str], log_path: Path, ready_timeout: float = 120
) -> subprocess.Popen:
    """`bentoml serve target` on `port` in a session of its own, once its /readyz says 200.

    Output goes to `log_path`; a server that exits or is not ready in time is reported with its tail.
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port)],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{target} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_process_group(proc)
            raise TimeoutError(f"{target} not ready in {ready_timeout}s:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)


def postgres_backend(database: str, dsn: str = "host=127.0.0.1 port=5432 user=postgres") -> str | None:
    """A PostgreSQL URI for the MLflow backend store (creating the database), or None if none answers."""
    try:
        import psycopg2
    except ImportError:
        return None
    try:
        connection = psycopg2.connect(f"{dsn} dbname=postgres connect_timeout=2")
    except psycopg2.OperationalError:
        return None
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{database}"')
    connection.close()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"


def drop_postgres_database(database: str, dsn: str = "host=127.0.0.1 port=5432 user=postgres") -> None:
    import psycopg2

    connection = psycopg2.connect(f"{dsn} dbname=postgres connect_timeout=2")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    connection.close()


def mlflow_works(url: str, host_header: str | None = None) -> bool:
    """The registry API answers (not only /health, which answers even when the Host is refused)."""
    headers = {"Host": host_header} if host_header else {}
    try:
        response = httpx.get(
            f"{url}/api/2.0/mlflow/registered-models/search",
            params={"max_results": 1},
            headers=headers,
            timeout=2,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, port: int, log_path: Path) -> Iterator[str]:
    """`mlflow server` serving its own artifacts; yields its URL once the registry API answers."""
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", str(artifacts),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
        "--allowed-hosts", ALLOWED_HOSTS,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not mlflow_works(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up; see {log_path}")
            time.sleep(0.3)
        yield url
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to the process and its children, SIGKILL after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bootstrap_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The init and ranker step's environment: DEMO_DATA on unless `environ` sets it.

    `make stack` is a local demo on a fresh server, so it needs the synthetic data and champion that
    compose's init only creates when asked (there it guards an existing Redis or MLflow).
    """
    return dict(environ) | {"DEMO_DATA": environ.get("DEMO_DATA", "true")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-port", type=int, default=5000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stack_dir = PROJECT_ROOT / "artifacts" / "stack"
    stack_dir.mkdir(parents=True, exist_ok=True)
    backend = postgres_backend("driver_ranker_mlflow") or f"sqlite:///{stack_dir / 'mlflow.db'}"
    logger.info("mlflow backend store: %s", backend)
    with mlflow_server(backend, stack_dir / "mlartifacts", args.mlflow_port, stack_dir / "mlflow.log") as url:
        os.environ["MLFLOW_TRACKING_URI"] = url
        get_settings.cache_clear()
        logger.info("mlflow server at %s (UI and registry)", url)
        command = [sys.executable, "-m", "driver_ranker.ops.bootstrap", "serve"]
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops the ranker, then the server
            subprocess.run(command, cwd=PROJECT_ROOT, env=bootstrap_env(os.environ), check=False)


if __name__ == "__main__":
    main()
