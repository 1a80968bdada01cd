"""Settings: every knob the service, the jobs and the tests read, in one typed class.

Values come from the environment (or a `.env` file); the defaults are those README.md's Configuration
table documents (tests/deployment/test_readme_defaults.py keeps the two equal).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    port: int = Field(3000, description="HTTP port of `bentoml serve`.")
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="BentoML worker processes; defaults to the number of cores.",
    )

    online_store: Literal["redis", "sqlite"] = Field(
        "redis", description="Feast online store: Redis, or embedded SQLite where no Redis runs."
    )
    redis_connection_string: str = Field(
        "127.0.0.1:6379",
        description="Feast Redis online store, `host:port[,password=...,ssl=true,db=0]`.",
    )
    redis_type: Literal["redis", "redis_cluster", "redis_sentinel"] = Field(
        "redis", description="Feast's `redis_type`: a single Redis, a Redis Cluster, or Sentinel."
    )
    redis_sentinel_master: str = Field(
        "mymaster", description="Master name the sentinels know (REDIS_TYPE=redis_sentinel)."
    )
    feature_reader: Literal["auto", "feast-sdk"] = Field(
        "auto",
        description="`auto`: the direct Redis reader where it applies, Feast's SDK otherwise; "
        "`feast-sdk`: always Feast's SDK (to compare, or to rule the direct reader out).",
    )
    feature_read_timeout_s: float = Field(
        0.25, gt=0, description="Bound on one online feature read; past it the request gets 503."
    )
    offline_store: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description="Feast offline store of training, batch scoring and materialization: DuckDB on "
        "this machine, or Spark (feature_store.spark.yaml: local mode by default, or a cluster; needs "
        "the `spark` extra). The service reads only the online store and that variant's registry, with no "
        "PySpark.",
    )
    feast_repo_path: Path = Field(
        PROJECT_ROOT / "feature_repo", description="The Feast repo (feature_store.yaml)."
    )
    feast_registry: SecretStr | None = Field(
        None,
        description="Feast's registry: unset, the repo's file (feature_repo/data/registry.db); a "
        "SQLAlchemy URL (postgresql://user:password@host:5432/feast), Feast's SQL registry, which "
        "rankers on any number of hosts share with no shared volume.",
    )

    mlflow_tracking_uri: str = Field(
        f"sqlite:///{PROJECT_ROOT / 'artifacts' / 'mlflow.db'}",
        description="MLflow tracking and registry: a SQLite file by default, or a server URL.",
    )
    mlflow_artifact_root: Path = Field(
        PROJECT_ROOT / "artifacts" / "mlruns",
        description="Where runs store artifacts when the tracking URI is a local database.",
    )
    model_name: str = Field("driver-ranker", description="Registered model name.")
    model_alias: str = Field("champion", description="Alias the service serves.")
    default_feature_service: str | None = Field(
        None,
        description="Feature service of a version whose tags, run and signature do not name one "
        "(a version registered from MLflow's UI, say); unset refuses such versions.",
    )
    demo_data: bool = Field(
        False,
        description="Bootstrap writes synthetic data, features and a champion where none exist "
        "(`make serve` turns it on; compose's init only with DEMO_DATA=true).",
    )

    max_driver_ids: int = Field(1000, ge=1, description="Most driver ids one request may carry.")
    max_body_bytes: int = Field(65_536, ge=1024, description="Largest request body; past it, 413.")
    max_concurrency: int = Field(
        64, ge=1, description="Requests in progress per service (split over workers); past it, 429."
    )
    request_timeout_s: float = Field(10.0, gt=0, description="BentoML's bound on one request.")
    trace_requests: bool = Field(
        False,
        description="Open BentoML's OpenTelemetry span for every request (exporter and sample rate "
        "from BentoML's `tracing` configuration). Off, the routes skip it: it cost as much as a ranking.",
    )
    keepalive_max_requests: int = Field(
        10_000, ge=1, description="Requests one keep-alive connection serves before it is closed."
    )
    keepalive_max_age_s: float = Field(
        30.0,
        gt=0,
        description="Age past which a keep-alive connection is closed after its next answer (drawn "
        "per connection between 80% and 100% of this): clients reconnect and spread over the workers.",
    )
    prediction_log: bool = Field(
        True,
        description="Log every answer (request id, model, version, role, best driver and score) in the "
        "online store's Redis, for POST /feedback and the A/B report.",
    )
    outcome_retention_s: int = Field(
        7 * 86400, ge=60, description="How long predictions and outcomes are kept (feedback later: 404)."
    )
    prediction_log_queue: int = Field(
        10_000,
        ge=1,
        description="Predictions waiting to be written, per worker; past it they are dropped (counted).",
    )
    drift_sample_rows: int = Field(
        5_000,
        ge=0,
        le=100_000,
        description="Feature rows the champion scored that each worker keeps (the latest) to compare with "
        "the training reference; 0 turns drift monitoring off.",
    )
    drift_min_rows: int = Field(
        500, ge=1, description="Rows sampled before a worker exports drift (fewer are too noisy to judge)."
    )
    drift_check_interval_s: float = Field(
        30.0, gt=0, description="How often each worker computes drift (PSI per feature) from its sample."
    )
    api_key: SecretStr | None = Field(None, description="If set, /inference needs `X-API-Key: <API_KEY>`.")

    registry_check_interval_s: float = Field(
        10.0, gt=0, description="How often each worker checks the registry for moved aliases."
    )
    registry_timeout_s: float = Field(5.0, gt=0, description="Bound on one call to an MLflow server.")
    bento_model_tag: str | None = Field(
        None,
        description="Model in BentoML's store to serve without a servable champion (unset: "
        "`<model_name>:latest`; in the image, the model its Bento carries).",
    )
    canary_alias: str = Field("challenger", description="Alias of the canary model.")
    canary_percent: float = Field(0.0, ge=0, le=100, description="Share of requests the canary answers.")
    routing: Literal["fixed", "bandit"] = Field(
        "fixed",
        description="`fixed`: the champion, and the canary's CANARY_PERCENT; `bandit`: Thompson sampling "
        "between the champion and BANDIT_ALIASES on trip outcomes from /feedback.",
    )
    bandit_aliases: str = Field(
        "challenger",
        description="ROUTING=bandit: the aliases of the arms beside the champion, comma-separated.",
    )
    bandit_floor: float = Field(
        0.05, ge=0, le=0.5, description="ROUTING=bandit: the least share of requests each arm gets."
    )
    shadow_alias: str | None = Field(None, description="Alias of a model scored off the response path.")
    admin_token: SecretStr | None = Field(None, description="Bearer token of /admin/*; unset turns them off.")

    batch_chunk_rows: int = Field(
        100_000, ge=1, description="Rows per offline join in batch scoring; bounds its memory."
    )

    @field_validator(
        "admin_token", "api_key", "shadow_alias", "bento_model_tag", "default_feature_service", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`ADMIN_TOKEN=` in an env file means no token, never an empty one that anybody can send."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("feast_repo_path", "mlflow_artifact_root")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.expanduser().resolve()

    @model_validator(mode="after")
    def _spark_on_redis(self) -> Settings:
        """The Spark variant of the repo has one online store, Redis: materializing on Spark into an
        embedded SQLite file would write from Spark's worker processes into one local file."""
        if self.offline_store == "spark" and self.online_store != "redis":
            raise ValueError("OFFLINE_STORE=spark needs ONLINE_STORE=redis (feature_store.spark.yaml)")
        return self

    @model_validator(mode="after")
    def _drift_can_export(self) -> Settings:
        if self.drift_sample_rows and self.drift_min_rows > self.drift_sample_rows:
            raise ValueError(
                f"DRIFT_MIN_ROWS ({self.drift_min_rows}) is above DRIFT_SAMPLE_ROWS ({self.drift_sample_rows}): "
                "drift would never be exported"
            )
        return self

    @property
    def feast_yaml(self) -> Path:
        if self.offline_store == "spark":  # its online store is Redis, as feature_store.yaml's
            return self.feast_repo_path / "feature_store.spark.yaml"
        name = "feature_store.yaml" if self.online_store == "redis" else "feature_store.sqlite.yaml"
        return self.feast_repo_path / name


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
