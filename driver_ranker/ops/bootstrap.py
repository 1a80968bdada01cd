"""`make serve` from a fresh clone, and compose's `init` job: the feature store and model ready to serve.

`prepare` applies the Feast definitions (the schema: entity, view, feature service) and materializes
the offline data that exists. Only with DEMO_DATA on (`make serve`, `make stack`, or
`DEMO_DATA=true docker compose up`) does it also generate synthetic data and train and register a
champion where none exists, start a local redis-server, and fall back to Feast's embedded SQLite
online store where no Redis can run (loudly). Without it, pointed at an existing Redis or MLflow,
it writes no synthetic features and registers nothing.

Each step is skipped when already done, so a second run goes straight to serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.errors import DependencyUnavailable
from driver_ranker.features.store import (
    apply,
    materialize,
    ping_redis,
    redis_address,
    redis_online_config,
)
from driver_ranker.jobs.data import STATS_FILE, DataSpec, write
from driver_ranker.jobs.training import train
from driver_ranker.model.registry import connect, version_for_alias
from driver_ranker.ops.processes import SERVING_ENV, wait_for

logger = logging.getLogger("driver_ranker.ops.bootstrap")


def redis_answers(settings: Settings) -> bool:
    try:
        ping_redis(redis_online_config(settings), 0.5)
    except DependencyUnavailable:
        return False
    return True


def ensure_redis(settings: Settings) -> bool:
    """True when Redis answers, starting a local `redis-server` if one is installed and none runs.

    False only for a single local address with no Redis to start; a remote one, a cluster or
    sentinels that do not answer are an error (a deployment's Redis being down is no reason to
    serve from SQLite).
    """
    if redis_answers(settings):
        return True
    address = redis_address(settings.redis_connection_string)
    host, _, port = address.partition(":")
    if settings.redis_type != "redis" or "," in address or host not in ("127.0.0.1", "localhost"):
        raise DependencyUnavailable(
            f"Redis does not answer at {address}: start it or fix REDIS_CONNECTION_STRING"
        )
    server = shutil.which("redis-server")
    if server is None:
        return False
    logger.info("starting redis-server on %s:%s", host, port)
    subprocess.run(
        [
            server,
            "--daemonize",
            "yes",
            "--bind",
            host,
            "--port",
            port or "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=False,
    )
    try:
        wait_for(lambda: redis_answers(settings), 5, "redis-server answers", poll_s=0.1)
    except TimeoutError:
        return False
    return True


DEMO_MARKER = "SYNTHETIC_DEMO_DATA"
"""A file beside the data bootstrap generated: that data is never materialized without DEMO_DATA."""

BANNER = "!" * 88


def loud(message: str, *args: object) -> None:
    """A warning that stands out in a container's log: the operator has something to do."""
    logger.warning("\n%s\n" + message + "\n%s", BANNER, *args, BANNER)


def without_credentials(uri: str) -> str:
    """A URI fit for a log line: a `user:password@` in it is dropped."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else uri


def has_data(settings: Settings) -> bool:
    return (settings.feast_repo_path / "data" / STATS_FILE).exists()


def is_demo_data(settings: Settings) -> bool:
    return (settings.feast_repo_path / "data" / DEMO_MARKER).exists()


def write_demo_data(settings: Settings, spec: DataSpec) -> None:
    data_dir = settings.feast_repo_path / "data"
    write(spec, data_dir)
    # A volume outlives the setting that filled it: the marker keeps a later run without
    # DEMO_DATA (pointed at a real Redis, say) from materializing these rows.
    (data_dir / DEMO_MARKER).write_text(
        "The parquet files here are synthetic demo data (written with DEMO_DATA on by "
        "driver_ranker.ops.bootstrap); without DEMO_DATA they are never materialized.\n"
    )
    logger.info("generated synthetic demo data under %s", data_dir)


def use_sqlite_if_no_redis(settings: Settings) -> Settings:
    """The demo's fallback: a local Redis started if installed, else Feast's embedded SQLite store."""
    if settings.online_store != "redis" or ensure_redis(settings):
        return settings
    loud(
        "NO REDIS at %s and none could be started: serving from Feast's embedded SQLite online\n"
        "store (ONLINE_STORE=sqlite). Fine for a demo, not for production: install redis-server.",
        redis_address(settings.redis_connection_string),
    )
    os.environ["ONLINE_STORE"] = "sqlite"  # for `bentoml serve`, which reads its own settings
    get_settings.cache_clear()
    return settings.model_copy(update={"online_store": "sqlite"})


def prepare(settings: Settings, spec: DataSpec | None = None) -> Settings:
    """Brings the machine to "ready to serve"; returns the settings to serve with.

    With `settings.demo_data`, synthetic data (`spec`, default size) and a champion are created where
    none exist. Without it, nothing synthetic is written anywhere: the definitions are applied, the
    data that exists is materialized, and a missing champion is reported, not trained.
    """
    if settings.demo_data:
        settings = use_sqlite_if_no_redis(settings)
        if not has_data(settings):
            write_demo_data(settings, spec or DataSpec())
    store = apply(settings, validate_sources=has_data(settings))
    data_dir = settings.feast_repo_path / "data"
    if not has_data(settings):
        loud(
            "NO OFFLINE DATA: %s does not exist, so materialization is skipped. The Feast definitions\n"
            "are applied; the online store (%s) serves what your feature pipeline materialized into it.\n"
            "For the synthetic demo data instead, set DEMO_DATA=true.",
            data_dir / STATS_FILE,
            settings.online_store,
        )
    elif is_demo_data(settings) and not settings.demo_data:
        loud(
            "%s holds synthetic demo data (%s) and DEMO_DATA is off: materialization is skipped, so\n"
            "no synthetic features reach %s. Remove that data (or the feast-data volume), or set\n"
            "DEMO_DATA=true.",
            data_dir,
            DEMO_MARKER,
            settings.online_store,
        )
    else:
        logger.info("features: %s materialization into %s", materialize(store), settings.online_store)

    champion = version_for_alias(connect(settings), settings.model_name, settings.model_alias)
    if champion is not None:
        logger.info("%s@%s is version %s", settings.model_name, settings.model_alias, champion.version)
    elif settings.demo_data:
        report = train(settings)
        logger.info("%s", report)
        if not report.champion:
            raise DependencyUnavailable(f"training produced no champion: {report.reason}")
    else:
        # Not an error of this job: a fresh registry is where a real champion gets registered,
        # and the ranker serves the model its Bento carries until the alias exists.
        loud(
            "NO CHAMPION: no version of %s has the alias %r in the registry at %s, and DEMO_DATA is\n"
            "off, so none is trained. Register a version there and give it the alias (MLflow's UI,\n"
            "or `make promote VERSION=n` with MLFLOW_TRACKING_URI set to it); until then the ranker\n"
            "has only the model its Bento carries. DEMO_DATA=true trains a synthetic one instead.",
            settings.model_name,
            settings.model_alias,
            without_credentials(settings.mlflow_tracking_uri),
        )
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "serve"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("feast", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = prepare(get_settings())
    except (DependencyUnavailable, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.command == "serve":
        command = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "service:DriverRanker",
            "--port",
            str(settings.port),
        ]
        logger.info("serving on http://127.0.0.1:%s (Swagger UI at /)", settings.port)
        os.chdir(PROJECT_ROOT)
        os.execve(sys.executable, command, {**os.environ, **SERVING_ENV})


if __name__ == "__main__":
    main()
