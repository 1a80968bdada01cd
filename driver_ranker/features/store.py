"""The Feast feature store: open it, apply the definitions, materialize into the online store.

`python -m driver_ranker.features.store` (`make features`) applies `feature_repo/` and fills Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.parquet as pq
import redis
import redis.asyncio as aioredis
import yaml
from feast import FeatureService, FeatureStore, FileSource
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.repo_config import FeastConfigBaseModel, RepoConfig, load_repo_config
from feast.repo_operations import apply_total, cli_check_repo, parse_repo
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from driver_ranker.config import Settings, get_settings
from driver_ranker.errors import DependencyUnavailable

logger = logging.getLogger(__name__)

FEATURE_SERVICE = "driver_ranker_v1"
"""The feature service the model is trained on; each model version records the one it used."""

LEGACY_REDIS_OPTIONS = frozenset({"skip_full_coverage_check"})
"""Options of the old redis-py-cluster that Feast's examples still carry. redis-py's sync
RedisCluster drops them silently, its asyncio RedisCluster (Feast's async reads) raises
TypeError on them, so they are dropped before any client sees them."""

REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)
"""What a Redis, a Redis Cluster or a Sentinel that does not answer raises through redis-py."""


def open_store(settings: Settings, offline: bool = True) -> FeatureStore:
    """Feast's store for these settings: the repo's yaml, read by Feast's own loader, with the Redis
    of the settings.

    feature_store.yaml holds literal defaults so that the `feast` CLI works inside feature_repo/
    as Feast users expect; the service, `make features` and compose take Redis from
    REDIS_CONNECTION_STRING, REDIS_TYPE and REDIS_SENTINEL_MASTER instead. `offline=False` (the
    service, the drift report): the registry and online store only (`online_repo_config`).
    """
    if not offline:
        config = online_repo_config(settings)
    else:
        if settings.offline_store == "spark":
            require_spark()
        config = load_repo_config(settings.feast_repo_path, settings.feast_yaml)
    online = config.online_config
    # Both set before anything reads `config.online_store` or `config.registry`, which Feast builds
    # once from these.
    if isinstance(online, dict) and online.get("type") == "redis":
        config.online_config = redis_online_config(settings, online)
    if settings.feast_registry is not None:
        config.registry_config = sql_registry_config(settings.feast_registry.get_secret_value(), config)
    return FeatureStore(repo_path=str(settings.feast_repo_path), config=config)


class NoOfflineStore(FeastConfigBaseModel):
    """The offline store of a config that reads online only."""

    type: Literal["none"] = "none"


def online_repo_config(settings: Settings) -> RepoConfig:
    """The repo's config without its offline store and batch engine, which reading online never
    uses: with OFFLINE_STORE=spark the service reads the registry the Spark jobs applied, and needs
    no PySpark (the image has none)."""
    raw = yaml.safe_load(os.path.expandvars(settings.feast_yaml.read_text()))
    raw.pop("batch_engine", None)
    # A config object, not a dict: Feast then imports no offline store class (its default, Dask,
    # took 0.36 s and 28 MB of each worker's start).
    raw["offline_store"] = NoOfflineStore()
    config = RepoConfig(**raw)
    config.repo_path = settings.feast_repo_path
    return config


def require_spark() -> None:
    """Raises DependencyUnavailable, saying what to install, without PySpark; and makes Spark's
    Python workers run this interpreter, which has Feast (materialization writes to Redis from
    them), unless PYSPARK_PYTHON names another (a cluster's executors have their own Python)."""
    if importlib.util.find_spec("pyspark") is None:
        raise DependencyUnavailable(
            "OFFLINE_STORE=spark needs PySpark: `pip install -e '.[spark]'` "
            "(or `pip install -r requirements-spark.lock`), and Java 17 or 21."
        )
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def sql_registry_config(url: str, config: RepoConfig) -> dict:
    """Feast's SQL registry at `url`, with the yaml registry's cache ttl. Connections are checked
    before use, so a restarted PostgreSQL costs no failed read."""
    yaml_registry = config.registry_config
    ttl = yaml_registry.get("cache_ttl_seconds", 600) if isinstance(yaml_registry, dict) else 600
    return {
        "registry_type": "sql",
        "path": url,
        "cache_ttl_seconds": ttl,
        "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
    }


def redis_online_config(settings: Settings, yaml_values: dict | None = None) -> RedisOnlineStoreConfig:
    """Feast's Redis online store config: the yaml's other options, the settings' Redis."""
    return RedisOnlineStoreConfig(
        **{
            **(yaml_values or {"type": "redis"}),
            "connection_string": without_legacy_options(settings.redis_connection_string),
            "redis_type": settings.redis_type,
            "sentinel_master": settings.redis_sentinel_master,
        }
    )


def without_legacy_options(connection_string: str) -> str:
    """The connection string without the options redis-py does not know (LEGACY_REDIS_OPTIONS)."""
    parts = connection_string.split(",")
    return ",".join(p for p in parts if p.split("=", 1)[0].strip() not in LEGACY_REDIS_OPTIONS)


def redis_address(connection_string: str) -> str:
    """`host:port` of every node of a Feast Redis connection string, whatever the order of its
    parts, and never its password or other options."""
    nodes, _ = RedisOnlineStore._parse_connection_string(connection_string)
    return ",".join(f"{node['host']}:{node.get('port', 6379)}" for node in nodes)


def redis_location(config: RedisOnlineStoreConfig) -> str:
    """Where the online store's Redis is, for errors and logs (no secrets)."""
    address = redis_address(config.connection_string)
    if config.redis_type == RedisType.redis_cluster:
        return f"Redis Cluster at {address}"
    if config.redis_type == RedisType.redis_sentinel:
        return f"Redis master {config.sentinel_master!r} of the sentinels at {address}"
    return f"Redis at {address}"


def online_store_location(store: FeatureStore) -> str:
    """The online store, for errors and logs: where its Redis is, or which store it is."""
    config = store.config.online_store
    if isinstance(config, RedisOnlineStoreConfig):
        return redis_location(config)
    return f"online store {type(config).__name__.removesuffix('OnlineStoreConfig')}"


def _client_parts(config: RedisOnlineStoreConfig, timeout_s: float) -> tuple[list, dict]:
    """Nodes and client options of a config (parsed by Feast), with bounded connect and read times.
    The config comes from `redis_online_config`, which already dropped LEGACY_REDIS_OPTIONS."""
    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    params |= {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    return [(node["host"], int(node.get("port", 6379))) for node in nodes], params


def redis_client(config: RedisOnlineStoreConfig, timeout_s: float) -> redis.Redis | RedisCluster:
    """A sync client of the online store's Redis, whichever its `redis_type`.

    A Redis Cluster client connects when built, so this raises when no node answers.
    """
    nodes, params = _client_parts(config, timeout_s)
    if config.redis_type == RedisType.redis_cluster:
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], **params)
    if config.redis_type == RedisType.redis_sentinel:
        return Sentinel(nodes, **params).master_for(config.sentinel_master)
    return redis.Redis(host=nodes[0][0], port=nodes[0][1], **params)


def async_redis_client(
    config: RedisOnlineStoreConfig, timeout_s: float
) -> aioredis.Redis | aioredis.RedisCluster:
    """An asyncio client of the online store's Redis, whichever its `redis_type`; it connects on
    first use, in the event loop that uses it (and only that one)."""
    nodes, params = _client_parts(config, timeout_s)
    if config.redis_type == RedisType.redis_cluster:
        return aioredis.RedisCluster(
            startup_nodes=[AsyncClusterNode(host, port) for host, port in nodes], **params
        )
    if config.redis_type == RedisType.redis_sentinel:
        return aioredis.Sentinel(nodes, **params).master_for(config.sentinel_master)
    return aioredis.Redis(host=nodes[0][0], port=nodes[0][1], **params)


def require_redis(store: FeatureStore, timeout_s: float = 1.0) -> None:
    """Fails with a message that says how to start Redis when the online store does not answer."""
    config = store.config.online_store
    if isinstance(config, RedisOnlineStoreConfig):
        ping_redis(config, timeout_s)


def ping_redis(config: RedisOnlineStoreConfig, timeout_s: float = 1.0) -> None:
    """Raises DependencyUnavailable, saying how to start Redis, when none answers there."""
    try:
        client = redis_client(config, timeout_s)
        try:
            client.ping()
        finally:
            client.close()
    except REDIS_ERRORS as exc:
        raise DependencyUnavailable(
            f"{redis_location(config)} does not answer ({exc}). Start it with "
            "`redis-server --daemonize yes --save '' --appendonly no`, "
            "or point REDIS_CONNECTION_STRING (and REDIS_TYPE) at one."
        ) from exc


def local_file(source: DataSource, repo_path: Path) -> Path | None:
    """The local file a file or Spark source reads (relative paths are the repo's); None for a
    table, a query or a URI (s3a://...), which this machine cannot check."""
    path = source.path if isinstance(source, FileSource | SparkSource) else None
    if not path or "://" in path:
        return None
    return repo_path / path


def source_files(settings: Settings) -> list[Path]:
    """The local files the repo's sources read.

    Raises ValueError when the definitions are of the other offline store's kind: driver_repo.py
    reads OFFLINE_STORE from the environment, and a value set only in a .env file misses it.
    """
    with contextlib.chdir(settings.feast_repo_path):
        cli_check_repo(settings.feast_repo_path, settings.feast_yaml)  # puts the repo on sys.path
        sources = parse_repo(settings.feast_repo_path).data_sources
    expected = SparkSource if settings.offline_store == "spark" else FileSource
    wrong = [
        s.name for s in sources if isinstance(s, FileSource | SparkSource) and not isinstance(s, expected)
    ]
    if wrong:
        raise ValueError(
            f"OFFLINE_STORE={settings.offline_store} but the Feast repo defines {', '.join(wrong)} for "
            "the other offline store: export OFFLINE_STORE in the environment, which driver_repo.py reads."
        )
    files = (local_file(s, settings.feast_repo_path) for s in sources)
    return [path for path in files if path is not None]


def require_data(settings: Settings) -> None:
    """Raises FileNotFoundError, saying what to run, when a file the repo's sources read is missing."""
    missing = [str(path) for path in source_files(settings) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: run `make data` first.")


def in_repo(store: FeatureStore) -> contextlib.chdir:
    """Runs a block inside the Feast repo: Feast imports the definition files, and the DuckDB
    offline store reads the sources (data/...), by paths relative to the working directory."""
    return contextlib.chdir(store.repo_path)


def apply(settings: Settings, validate_sources: bool = True) -> FeatureStore:
    """`feast apply` of the repo: registers the entity, views and services, creates online tables.

    The definitions write no feature values; without the data files (a deployment whose data is
    elsewhere, or not there yet) Feast cannot validate the sources, and `validate_sources=False`
    tells it not to.
    """
    if validate_sources:
        require_data(settings)
    store = open_store(settings)
    require_redis(store)
    with in_repo(store):
        cli_check_repo(settings.feast_repo_path, settings.feast_yaml)
        apply_total(store.config, settings.feast_repo_path, skip_source_validation=not validate_sources)
    return open_store(settings)


def historical_features(
    store: FeatureStore, entity_df: pd.DataFrame, service: FeatureService
) -> pd.DataFrame:
    """Feast's point-in-time join of `entity_df` (driver_id, event_timestamp, any other columns) to
    the feature service, through whichever offline store feature_store.yaml names."""
    # Arrow refuses to cast nanoseconds it would lose into the offline store's microseconds.
    entity_df = entity_df.assign(event_timestamp=entity_df["event_timestamp"].dt.floor("us"))
    with in_repo(store):
        rows = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    # Spark hands back times without their zone, in its session's (UTC: feature_store.spark.yaml).
    if rows["event_timestamp"].dt.tz is None:
        rows["event_timestamp"] = rows["event_timestamp"].dt.tz_localize("UTC")
    return rows


def _online_store_filled(store: FeatureStore) -> bool:
    """Whether the first entity of each view's source file has features online (a Redis that
    restarted empty has none). Views whose source is no local file are taken as filled."""
    for view in store.list_feature_views():
        path = local_file(view.batch_source, store.repo_path)
        if path is None:
            continue
        join_key = view.entity_columns[0].name
        first = pq.ParquetFile(path).read_row_group(0, columns=[join_key])
        row = store.get_online_features(
            features=[f"{view.name}:{f.name}" for f in view.features],
            entity_rows=[{join_key: first.column(0)[0].as_py()}],
        ).to_dict()
        if all(values[0] is None for name, values in row.items() if name != join_key):
            return False
    return True


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
    except (DependencyUnavailable, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    logger.info(
        "features: applied project %r, %s materialization into %s in %.1f s",
        store.project, kind, online_store_location(store), time.perf_counter() - started,
    )  # fmt: skip


if __name__ == "__main__":
    main()
