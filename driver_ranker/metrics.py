"""The service's own Prometheus metrics (prometheus_client, as BentoML asks), exported by BentoML
at /metrics beside its own: BentoML runs prometheus_client in multiprocess mode across workers.

Gauges are per live worker process (a `pid` label): each worker's model shows, and a dead
worker's series go at the next start or registry check of any worker (`forget_dead_workers`).
"""

from __future__ import annotations

import glob
import os
import re

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.multiprocess import mark_process_dead

REQUESTS = Counter(
    name="driver_ranker_requests",
    documentation="Inference requests by outcome (ok, unavailable) and the model version that answered.",
    labelnames=["outcome", "version"],
)
DRIVERS = Counter(
    name="driver_ranker_drivers",
    documentation="Drivers in answered requests (each once per request): the denominator of the unknown "
    "and stale shares.",
)
UNKNOWN_DRIVERS = Counter(
    name="driver_ranker_unknown_drivers",
    documentation="Requested drivers with no features in the online store.",
)
STALE_DRIVERS = Counter(
    name="driver_ranker_stale_drivers",
    documentation="Requested drivers whose features are older than the feature view's ttl (not scored).",
)
ALL_UNKNOWN = Counter(
    name="driver_ranker_all_drivers_unknown",
    documentation="Answered requests in which no driver had features (an empty online store shows here).",
)
FEATURE_AGE_SECONDS = Histogram(
    name="driver_ranker_feature_age_seconds",
    documentation="Age of the oldest features scored in each request (now minus Feast's event time).",
    buckets=(60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400),
)
PREDICTIONS_LOGGED = Counter(
    name="driver_ranker_predictions_logged",
    documentation="Answers for the prediction log by outcome (written, dropped_queue_full, dropped_store_error).",
    labelnames=["outcome"],
)
FEEDBACK = Counter(
    name="driver_ranker_feedback",
    documentation="Trip outcomes posted to /feedback (recorded, repeated, conflicting, unknown_request: "
    "never answered or past OUTCOME_RETENTION_S).",
    labelnames=["outcome"],
)
BANDIT_ASSIGNMENTS = Counter(
    name="driver_ranker_bandit_assignments",
    documentation="Requests the bandit sent to each arm (ROUTING=bandit).",
    labelnames=["arm"],
)
BANDIT_POSTERIOR_MEAN = Gauge(
    name="driver_ranker_bandit_posterior_mean",
    documentation="Posterior mean completion rate of each version's recommendations (ROUTING=bandit).",
    labelnames=["version"],
    multiprocess_mode="max",  # every worker reads the same shared counts
)
BEST_SCORE = Histogram(
    name="driver_ranker_best_score",
    documentation="Score of the best driver of each answered request, by model version.",
    labelnames=["version"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
)
FEATURE_READ_SECONDS = Histogram(
    name="driver_ranker_feature_read_seconds",
    documentation="Time to read one request's features from the online store, by outcome (ok, unavailable).",
    labelnames=["outcome"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
FEATURE_PSI = Gauge(
    name="driver_ranker_feature_psi",
    documentation="Population stability index of each feature the champion scored (a worker's latest "
    "DRIFT_SAMPLE_ROWS rows) against its training reference: < 0.1 stable, > 0.25 shifted.",
    labelnames=["feature"],
    multiprocess_mode="liveall",
)
DRIFT_SAMPLE_ROWS = Gauge(
    name="driver_ranker_drift_sample_rows",
    documentation="Feature rows in a worker's drift sample (drift is exported from DRIFT_MIN_ROWS on).",
    multiprocess_mode="liveall",
)

MODEL_VERSION = Gauge(
    name="driver_ranker_model_version",
    documentation="Registry version a worker serves in a role (champion, canary, shadow); 0: the role is off.",
    labelnames=["role"],
    multiprocess_mode="liveall",  # one series per live worker and role, whatever the swaps
)
MODEL_SWAPS = Counter(
    name="driver_ranker_model_swaps",
    documentation="Versions swapped in without a restart, by role.",
    labelnames=["role"],
)
MODEL_REFUSALS = Counter(
    name="driver_ranker_model_refusals",
    documentation="Versions refused (cannot be loaded or prepared, or their features are not served), by role.",
    labelnames=["role"],
)
REGISTRY_CHECKS = Counter(
    name="driver_ranker_registry_checks",
    documentation="Checks of the registry's aliases, by outcome (ok, unreachable, denied).",
    labelnames=["outcome"],
)
CONNECTIONS_CLOSED = Counter(
    name="driver_ranker_connections_closed",
    documentation="Keep-alive connections closed to spread clients over workers, by reason "
    "(requests, age, share: the worker held more than its fair share).",
    labelnames=["reason"],
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


_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


def forget_dead_workers() -> None:
    """Drops the gauge series of workers that died without saying so (a killed worker).

    BentoML marks a worker dead only when it exits cleanly; prometheus_client keeps a live gauge's
    file until someone does.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(os.path.basename(path))
        if match and not process_alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), directory)


def process_alive(pid: int) -> bool:
    """Whether a process of this pid runs (a worker that died without saying so does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
