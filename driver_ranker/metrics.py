"""The service's own Prometheus metrics (prometheus_client, as BentoML asks), exported by BentoML
at /metrics beside its own: BentoML runs prometheus_client in multiprocess mode across workers.

Gauges are per worker process (BentoML adds a `pid` label), so each worker's model shows.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    name="driver_ranker_requests",
    documentation="Inference requests by outcome (ok, unavailable) and the model version that answered.",
    labelnames=["outcome", "version"],
)
UNKNOWN_DRIVERS = Counter(
    name="driver_ranker_unknown_drivers",
    documentation="Requested drivers with no features in the online store.",
)
BEST_SCORE = Histogram(
    name="driver_ranker_best_score",
    documentation="Score of the best driver of each answered request, by model version.",
    labelnames=["version"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
FEATURE_READ_SECONDS = Histogram(
    name="driver_ranker_feature_read_seconds",
    documentation="Time to read one request's features from the online store.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

MODEL_VERSION = Gauge(
    name="driver_ranker_model_version",
    documentation="1 for the version a worker serves in a role (champion, canary, shadow), 0 once replaced.",
    labelnames=["role", "name", "version", "alias"],
)
MODEL_SWAPS = Counter(
    name="driver_ranker_model_swaps",
    documentation="Versions swapped in without a restart, by role.",
    labelnames=["role"],
)
MODEL_REFUSALS = Counter(
    name="driver_ranker_model_refusals",
    documentation="Versions refused because the online store does not serve their features, by role.",
    labelnames=["role"],
)
REGISTRY_CHECKS = Counter(
    name="driver_ranker_registry_checks",
    documentation="Checks of the registry's aliases, by outcome (ok, unreachable).",
    labelnames=["outcome"],
)
SHADOW = Counter(
    name="driver_ranker_shadow",
    documentation="Shadow scorings by outcome: same_best, other_best, failed, skipped (backlog full).",
    labelnames=["outcome"],
)
SHADOW_SCORE_DIFF = Histogram(
    name="driver_ranker_shadow_score_diff",
    documentation="Largest absolute score difference between shadow and served model in one request.",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
