"""Feature definitions of driver-ranker: what a driver is, and what we know about one."""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.types import Float32, Int64

# A driver who could take the trip; every feature below is keyed by this id.
driver = Entity(
    name="driver",
    join_keys=["driver_id"],
    value_type=ValueType.INT64,
    description="A driver, by id (1001 up).",
)

# Hourly statistics per driver, written by `make data`. Each offline store reads its own kind of
# source, so OFFLINE_STORE (the setting that also picks feature_store.spark.yaml) picks the kind here;
# the Feast CLI has no other way to tell this file. Spark's path is absolute: its JVM would resolve a
# relative one against the folder it started in. On a cluster, a path every executor reads
# (s3a://bucket/driver_stats/).
if os.environ.get("OFFLINE_STORE", "duckdb") == "spark":
    driver_stats_source = SparkSource(
        name="driver_stats_source",
        path=str(Path(__file__).resolve().parent / "data" / "driver_stats.parquet"),
        file_format="parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )
else:
    driver_stats_source = FileSource(
        name="driver_stats_source",
        path="data/driver_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )

# The statistics the ranker reads online and trains on offline.
driver_stats = FeatureView(
    name="driver_stats",
    entities=[driver],
    ttl=timedelta(days=2),
    schema=[
        Field(name="conv_rate", dtype=Float32, description="Share of offers the driver converted."),
        Field(name="acc_rate", dtype=Float32, description="Share of offers the driver accepted."),
        Field(name="avg_daily_trips", dtype=Int64, description="Trips per day, recent average."),
    ],
    online=True,
    source=driver_stats_source,
    tags={"team": "dispatch"},
)

# The contract between training and serving: the model consumes exactly these features.
driver_ranker_v1 = FeatureService(
    name="driver_ranker_v1",
    features=[driver_stats],
    description="Features of the driver-ranker model, version 1.",
)
