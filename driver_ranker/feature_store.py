"""The Feast feature store: open it, apply the definitions, materialize into the online store.

`python -m driver_ranker.feature_store` (`make features`) applies `feature_repo/` and fills Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import redis
from feast import FeatureService, FeatureStore
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.repo_operations import apply_total, cli_check_repo

from driver_ranker.config import Settings, get_settings
from driver_ranker.data import FIRST_DRIVER_ID, STATS_FILE
from driver_ranker.errors import DependencyUnavailable

logger = logging.getLogger(__name__)

FEATURE_SERVICE = "driver_ranker_v1"
"""The feature service the model is trained on; each model version records the one it used."""


def open_store(settings: Settings) -> FeatureStore:
    settings.export_for_feast()
    return FeatureStore(repo_path=str(settings.feast_repo_path), fs_yaml_file=settings.feast_yaml)


def redis_address(connection_string: str) -> str:
    """`host:port` of a Feast Redis connection string, without its secrets."""
    return connection_string.split(",", 1)[0]


def redis_kwargs(connection_string: str, timeout_s: float) -> dict:
    """redis-py client arguments for a Feast connection string (parsed by Feast), with bounded
    connect and read times."""
    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    return {
        "host": nodes[0]["host"],
        "port": int(nodes[0]["port"]),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        **params,
    }


def redis_client(connection_string: str, timeout_s: float) -> redis.Redis:
    return redis.Redis(**redis_kwargs(connection_string, timeout_s))


def require_redis(store: FeatureStore, timeout_s: float = 1.0) -> None:
    """Fails with a message that says how to start Redis when the online store does not answer."""
    config = store.config.online_store
    if isinstance(config, RedisOnlineStoreConfig):
        ping_redis(config.connection_string, timeout_s)


def ping_redis(connection_string: str, timeout_s: float = 1.0) -> None:
    """Raises DependencyUnavailable, saying how to start Redis, when none answers there."""
    address = redis_address(connection_string)
    try:
        redis_client(connection_string, timeout_s).ping()
    except redis.RedisError as exc:
        raise DependencyUnavailable(
            f"Redis does not answer at {address} ({exc}). Start it with "
            "`redis-server --daemonize yes --save '' --appendonly no`, "
            "or point REDIS_CONNECTION_STRING at one."
        ) from exc


def require_data(repo_path: Path) -> None:
    if not (repo_path / "data" / STATS_FILE).exists():
        raise FileNotFoundError(f"{repo_path / 'data' / STATS_FILE} is missing: run `make data` first.")


def in_repo(store: FeatureStore) -> contextlib.chdir:
    """Runs a block inside the Feast repo: Feast imports the definition files, and the DuckDB
    offline store reads the sources (data/...), by paths relative to the working directory."""
    return contextlib.chdir(store.repo_path)


def apply(settings: Settings) -> FeatureStore:
    """`feast apply` of the repo: registers the entity, views and services, creates online tables."""
    require_data(settings.feast_repo_path)
    store = open_store(settings)
    require_redis(store)
    with in_repo(store):
        cli_check_repo(settings.feast_repo_path, settings.feast_yaml)
        apply_total(store.config, settings.feast_repo_path, skip_source_validation=False)
    return open_store(settings)


def historical_features(
    store: FeatureStore, entity_df: pd.DataFrame, service: FeatureService
) -> pd.DataFrame:
    """Feast's point-in-time join of `entity_df` (driver_id, event_timestamp, any other columns) to
    the feature service, through whichever offline store feature_store.yaml names."""
    # Arrow refuses to cast nanoseconds it would lose into the offline store's microseconds.
    entity_df = entity_df.assign(event_timestamp=entity_df["event_timestamp"].dt.floor("us"))
    with in_repo(store):
        return store.get_historical_features(entity_df=entity_df, features=service).to_df()


def _online_store_filled(store: FeatureStore) -> bool:
    """Whether the first driver has features online (Redis here keeps nothing across restarts)."""
    row = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{"driver_id": FIRST_DRIVER_ID}]
    ).to_dict()
    return any(values[0] is not None for name, values in row.items() if name != "driver_id")


def materialize(store: FeatureStore, end: datetime | None = None, full: bool = False) -> str:
    """Incremental materialization; a full one when asked or when the online store is empty.

    Returns which of the two ran.
    """
    end = end or datetime.now(UTC)
    views = store.list_feature_views()
    with in_repo(store):
        if not full and all(v.most_recent_end_time for v in views) and _online_store_filled(store):
            store.materialize_incremental(end_date=end)
            return "incremental"
        store.materialize(start_date=datetime(1970, 1, 1, tzinfo=UTC), end_date=end)
    return "full"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Apply feature_repo/ and materialize into the online store.")
    parser.add_argument(
        "--full", action="store_true", help="materialize all data again (after `make data` regenerated it)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    started = time.perf_counter()
    try:
        store = apply(settings)
        kind = materialize(store, full=args.full)
    except (DependencyUnavailable, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"features: applied project {store.project!r}, {kind} materialization into "
        f"{type(store.config.online_store).__name__} in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
