"""Feature definitions of driver-ranker: what a driver is, and what we know about one."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64

# A driver who could take the trip; every feature below is keyed by this id.
driver = Entity(
    name="driver",
    join_keys=["driver_id"],
    value_type=ValueType.INT64,
    description="A driver, by id (1001 up).",
)

# Hourly statistics per driver, written by `make data`.
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
