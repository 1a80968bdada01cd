"""`make serve` from a fresh clone: Redis, data, features and a champion, then `bentoml serve`.

Each step is skipped when already done, so a second run goes straight to serving. Where no Redis
answers and none can be started, it falls back to Feast's embedded SQLite online store, loudly.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.data import STATS_FILE, DataSpec, write
from driver_ranker.errors import DependencyUnavailable
from driver_ranker.feature_store import (
    apply,
    materialize,
    ping_redis,
    redis_address,
)
from driver_ranker.registry import connect, version_for_alias
from driver_ranker.training import train

logger = logging.getLogger("driver_ranker.bootstrap")


def redis_answers(settings: Settings) -> bool:
    try:
        ping_redis(settings.redis_connection_string, 0.5)
    except DependencyUnavailable:
        return False
    return True


def ensure_redis(settings: Settings) -> bool:
    """True when Redis answers, starting a local `redis-server` if one is installed and none runs.

    False only for a local address with no Redis to start; a remote one that does not answer is an
    error (a deployment's Redis being down is no reason to serve from SQLite).
    """
    if redis_answers(settings):
        return True
    address = redis_address(settings.redis_connection_string)
    host, _, port = address.partition(":")
    if host not in ("127.0.0.1", "localhost"):
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
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if redis_answers(settings):
            return True
        time.sleep(0.1)
    return False


def prepare(settings: Settings) -> Settings:
    """Brings the machine to "ready to serve"; returns the settings to serve with."""
    if settings.online_store == "redis" and not ensure_redis(settings):
        banner = "!" * 88
        logger.warning(
            "\n%s\nNO REDIS at %s and none could be started: serving from Feast's embedded SQLite online\n"
            "store (ONLINE_STORE=sqlite). Fine for a demo, not for production: install redis-server.\n%s",
            banner,
            redis_address(settings.redis_connection_string),
            banner,
        )
        os.environ["ONLINE_STORE"] = "sqlite"
        get_settings.cache_clear()
        settings = get_settings()
    if not (settings.feast_repo_path / "data" / STATS_FILE).exists():
        write(DataSpec(), settings.feast_repo_path / "data")
        logger.info("generated data under %s", settings.feast_repo_path / "data")
    store = apply(settings)
    logger.info("features: %s materialization into %s", materialize(store), settings.online_store)
    champion = version_for_alias(connect(settings), settings.model_name, settings.model_alias)
    if champion is None:
        report = train(settings)
        logger.info("%s", report)
        if not report.champion:
            raise DependencyUnavailable(f"training produced no champion: {report.reason}")
    else:
        logger.info("%s@%s is version %s", settings.model_name, settings.model_alias, champion.version)
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
        os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
