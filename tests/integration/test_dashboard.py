"""The Grafana dashboard (deployment/grafana/dashboards/driver-ranker.json) against what a running
ranker really exports: a real server (2 workers, bandit routing between the champion and a
challenger, drift on) under load, scraped by a real Prometheus. Every panel's query, read from the
JSON with Grafana's variables filled in, must parse and return at least one series: a new panel is
tested as soon as it is added, and a renamed metric or label empties a panel here, not on call."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import FIRST_DRIVER_ID
from driver_ranker.model.registry import connect
from tests.support.dashboard import dashboard, grafana_regex, panels, queries, substitute
from tests.support.load import Load
from tests.support.prometheus import Prometheus, QueryError, prometheus_server
from tests.support.registry import register_logistic
from tests.support.stack import REDIS, ranker_server

ALIAS = "dashboard-arm"
# What Grafana puts in place of its own variables. 30 s holds 30 of the test's 1 s scrapes (Grafana
# makes $__rate_interval at least 4 scrape intervals).
GRAFANA_VARIABLES = {
    "__rate_interval": "30s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
SELECTOR = re.compile(r"\b([a-zA-Z_:][\w:]*)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
OWN_METRIC = re.compile(r"\b(?:driver_ranker|bentoml)_\w+")
# The views an owner looks at, by the metric each reads.
VIEWS = {
    "traffic by outcome": "driver_ranker_requests_total",
    "answers by HTTP status": "bentoml_service_request_total",
    "latency percentiles": "bentoml_service_request_duration_seconds_bucket",
    "feature read time": "driver_ranker_feature_read_seconds_bucket",
    "model version per worker": "driver_ranker_model_version",
    "bandit shares": "driver_ranker_bandit_assignments_total",
    "unknown drivers": "driver_ranker_unknown_drivers_total",
    "stale drivers": "driver_ranker_stale_drivers_total",
    "their denominator": "driver_ranker_drivers_total",
    "score distribution": "driver_ranker_best_score_bucket",
    "feature age": "driver_ranker_feature_age_seconds_bucket",
    "drift per feature": "driver_ranker_feature_psi",
    "drift sample": "driver_ranker_drift_sample_rows",
}


def test_every_panel_reads_the_datasource_variable_and_rates_over_the_rate_interval():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    # Provisioned or imported, the panels ask whichever Prometheus the variable names.
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    graphs = [panel for panel in panels(board) if panel["type"] != "row"]
    assert len({panel["id"] for panel in panels(board)}) == len(list(panels(board)))
    for panel in graphs:
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
            # Grafana sizes $__rate_interval to the scrape interval; a fixed range breaks with another.
            ranges = re.findall(r"\[([^\]]+)\]", target["expr"])
            assert set(ranges) <= {"$__rate_interval"}, (panel["title"], ranges)
            assert 'instance=~"$instance"' in target["expr"], panel["title"]  # the replica picker applies
    named = {name for _, _, expr in queries(board) for name in OWN_METRIC.findall(expr)}
    assert not {view for view, metric in VIEWS.items() if metric not in named}


@pytest.fixture
def challenger(feast_settings, champion) -> Iterator[str]:
    """A second version under its own alias: the bandit's other arm, so the routing panels have data."""
    client = connect(feast_settings)
    version = register_logistic(feast_settings)
    client.set_registered_model_alias(feast_settings.model_name, ALIAS, version)
    yield version
    client.delete_registered_model_alias(feast_settings.model_name, ALIAS)
    log = redis.Redis.from_url(f"redis://{REDIS}")  # the answers the bandit logged
    for key in log.scan_iter(match=f"dr:{open_store(feast_settings).project}:*", count=1000):
        log.delete(key)


def bodies(count: int, known: int = 20) -> list[dict]:
    """Requests of `known` demo drivers (ids 1001..2000) and two the online store does not know."""
    rng = np.random.default_rng(18)
    unknown = [1, 999_999]
    return [
        {
            "driver_ids": [
                *rng.choice(
                    np.arange(FIRST_DRIVER_ID, FIRST_DRIVER_ID + 1000), known, replace=False
                ).tolist(),
                *unknown,
            ]
        }
        for _ in range(count)
    ]


def missing(prometheus: Prometheus, board: dict) -> list[str]:
    """The ranker's and BentoML's metrics the dashboard names that Prometheus has no series of."""
    names = sorted({name for _, _, expr in queries(board) for name in OWN_METRIC.findall(expr)})
    return [name for name in names if not prometheus.query(f"count({name})")]


def unknown_labels(prometheus: Prometheus, board: dict) -> list[str]:
    """Labels a selector matches on that no series of its metric carries. A share reads 0 while its
    numerator has no series (`or vector(0)`): this is what still catches a misspelt label there."""
    problems = []
    for title, ref, expr in queries(board):
        for name, matchers in SELECTOR.findall(expr):
            carried = set().union(*(series["metric"] for series in prometheus.query(name)))
            for label in set(MATCHER_LABEL.findall(matchers)) - carried:
                problems.append(f"{title} ({ref}): {name} has no label {label!r}")
    return problems


@pytest.mark.slow
def test_every_panel_query_returns_series_from_a_loaded_ranker(feast_settings, champion, challenger):
    env = {
        "ROUTING": "bandit",
        "BANDIT_ALIASES": ALIAS,
        # Drift computed every second once 50 rows are sampled, so its panels fill within the test.
        "DRIFT_CHECK_INTERVAL_S": "1",
        "DRIFT_MIN_ROWS": "50",
    }
    board = dashboard()
    with (
        ranker_server(feast_settings, workers=2, extra_env=env) as url,
        prometheus_server([url.removeprefix("http://")]) as prometheus,
    ):
        loads = [Load(url, body, threads=2) for body in bodies(2)]
        with loads[0], loads[1]:
            prometheus.wait_until_up()
            prometheus.wait_for_scrapes(5)
            # Drift needs its interval and its rows: every named metric gets a bounded chance to
            # appear, and what is still missing is reported below.
            deadline = time.monotonic() + 30
            while missing(prometheus, board) and time.monotonic() < deadline:
                time.sleep(1)
        for load in loads:
            statuses = {status for _, status, _, _ in load.results}
            assert statuses == {200}, load.report("load", load.results[0][0])

        # The replica picker's own query (label_values), as Grafana runs it; its value as Grafana
        # formats a multi-value variable for Prometheus: a regex of escaped values.
        definition = next(v for v in board["templating"]["list"] if v["name"] == "instance")["definition"]
        label, metric = re.fullmatch(r"label_values\((\w+), (\w+)\)", definition).group(2, 1)
        instances = prometheus.label_values(label, metric)
        assert instances == [url.removeprefix("http://")], instances
        values = GRAFANA_VARIABLES | {
            "instance": grafana_regex(instances),
            "datasource": "prometheus",
        }

        problems = [f"no series of {name}" for name in missing(prometheus, board)]
        for title, ref, expr in queries(board):
            query = substitute(expr, values)
            try:
                if not prometheus.query(query):
                    problems.append(f"{title} ({ref}) returns no series: {query}")
            except QueryError as refused:
                problems.append(f"{title} ({ref}) refused: {refused}")
        problems += unknown_labels(prometheus, board)
        assert not problems, "\n".join(problems)
