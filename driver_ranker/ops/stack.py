"""The compose deployment as local processes: Redis, an `mlflow server`, the init job, the ranker.

`python -m driver_ranker.ops.stack` (`make stack`) runs what deployment/docker-compose.yml runs, on
machines without Docker: the MLflow server keeps its runs in the local PostgreSQL when one answers
on 127.0.0.1:5432 (SQLite otherwise) and serves artifacts itself; training registers through it
over HTTP, and the ranker loads its champion from it over HTTP. It is a local demo, so the init step
runs with DEMO_DATA on (synthetic data and a champion) unless DEMO_DATA is set otherwise.

`--replicas n` (`make stack REPLICAS=n`) runs n rankers behind HAProxy on the ranker's port, as
compose's `lb` service and `--scale ranker=n` do (driver_ranker/ops/balancer.py).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from driver_ranker.config import PROJECT_ROOT, get_settings
from driver_ranker.ops.processes import stop_process_group, wait_for

logger = logging.getLogger("driver_ranker.ops.stack")

# The Host headers the server accepts: the compose service name and the loopback names.
ALLOWED_HOSTS = "mlflow,mlflow:5000,localhost,localhost:*,127.0.0.1,127.0.0.1:*"


def postgres_backend(database: str, dsn: str = "host=127.0.0.1 port=5432 user=postgres") -> str | None:
    """A PostgreSQL URI of `database` (created if missing) on the local server, or None if none answers."""
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
        wait_for(
            lambda: mlflow_works(url),
            90,
            f"mlflow server answers at {url}",
            proc=proc,
            log_path=log_path,
            poll_s=0.3,
        )
        yield url
    finally:
        stop_process_group(proc)


def bootstrap_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The init and ranker step's environment: DEMO_DATA on unless `environ` sets it.

    `make stack` is a local demo on a fresh server, so it needs the synthetic data and champion that
    compose's init only creates when asked (there it guards an existing Redis or MLflow).
    """
    return dict(environ) | {"DEMO_DATA": environ.get("DEMO_DATA", "true")}


def serve_replicas(count: int, folder: Path) -> None:
    """The init step, then `count` rankers behind HAProxy on the port one ranker would take (PORT),
    until Ctrl-C; what compose runs with `--scale ranker=<count>` and its `lb` service."""
    # Here, not at the top: balancer.py builds on this module's helpers.
    from driver_ranker.errors import DependencyUnavailable
    from driver_ranker.ops import bootstrap
    from driver_ranker.ops.balancer import balanced_replicas

    # SIGTERM (a supervisor, `kill`) stops everything as Ctrl-C does: HAProxy and the rankers run in
    # sessions of their own, and would outlive this process otherwise.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ.update(bootstrap_env(os.environ))
    get_settings.cache_clear()
    for noisy in ("feast", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # In this process, as `bootstrap serve` does before it becomes the ranker: where no Redis can
    # run, prepare() switches ONLINE_STORE to SQLite in os.environ, which the replicas then inherit.
    try:
        settings = bootstrap.prepare(get_settings())
    except (DependencyUnavailable, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    # The fallback model of a ranker without a champion is in the BentoML home `make bento` used.
    model_store = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models"
    logger.info("starting %d rankers, WORKERS=%d each", count, settings.workers)
    running = balanced_replicas(count, os.environ, folder, settings.port, model_store=model_store)
    with running as (replicas, lb):
        for replica in replicas.members:
            logger.info("%s on %s (log: %s)", replica.name, replica.url, replica.log)
        logger.info(
            "HAProxy on %s (Swagger UI at /), its stats at %s (log: %s)", lb.url, lb.stats_url, lb.log
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops HAProxy, the rankers, then the server
            while lb.proc.poll() is None:
                time.sleep(1)
            logger.error("haproxy exited with %s: see %s", lb.proc.returncode, lb.log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="rankers; more than 1: behind HAProxy on PORT (make stack REPLICAS=n)",
    )
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be 1 or more")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stack_dir = PROJECT_ROOT / "artifacts" / "stack"
    stack_dir.mkdir(parents=True, exist_ok=True)
    backend = postgres_backend("driver_ranker_mlflow") or f"sqlite:///{stack_dir / 'mlflow.db'}"
    logger.info("mlflow backend store: %s", backend)
    # Feast's SQL registry beside it, as compose has it: the rankers share no file.
    feast_registry = postgres_backend("driver_ranker_feast")
    if feast_registry and not os.environ.get("FEAST_REGISTRY"):
        os.environ["FEAST_REGISTRY"] = feast_registry.replace("postgresql+psycopg2://", "postgresql://")
        logger.info("Feast registry: %s", os.environ["FEAST_REGISTRY"])
    with mlflow_server(backend, stack_dir / "mlartifacts", args.mlflow_port, stack_dir / "mlflow.log") as url:
        os.environ["MLFLOW_TRACKING_URI"] = url
        get_settings.cache_clear()
        logger.info("mlflow server at %s (UI and registry)", url)
        if args.replicas > 1:
            serve_replicas(args.replicas, stack_dir / "replicas")
            return
        command = [sys.executable, "-m", "driver_ranker.ops.bootstrap", "serve"]
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C stops the ranker, then the server
            subprocess.run(command, cwd=PROJECT_ROOT, env=bootstrap_env(os.environ), check=False)


if __name__ == "__main__":
    main()
