"""The service's own Prometheus metrics, exported by BentoML at /metrics beside its own."""

from __future__ import annotations

import bentoml

REQUESTS = bentoml.metrics.Counter(
    name="driver_ranker_requests",
    documentation="Inference requests by outcome (ok, bad_request, unavailable).",
    labelnames=["outcome"],
)
UNKNOWN_DRIVERS = bentoml.metrics.Counter(
    name="driver_ranker_unknown_drivers",
    documentation="Requested drivers with no features in the online store.",
)
MODEL_VERSION = bentoml.metrics.Gauge(
    name="driver_ranker_model_version",
    documentation="Registry version served (1 for the loaded version).",
    labelnames=["name", "version", "alias"],
)
BEST_SCORE = bentoml.metrics.Histogram(
    name="driver_ranker_best_score",
    documentation="Score of the best driver of each answered request.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
FEATURE_READ_SECONDS = bentoml.metrics.Histogram(
    name="driver_ranker_feature_read_seconds",
    documentation="Time to read one request's features from the online store.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
