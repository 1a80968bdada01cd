"""`make ab-report` on a prediction log in the real Redis: outcomes join the recommended driver's
prediction, the rates and intervals are the counts', a winner is named only past MIN_OUTCOMES; and
the interval of the difference covers the true one at its stated rate."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from driver_ranker.jobs.ab_report import MIN_OUTCOMES, Rate, difference, joined, read_log, report, run
from driver_ranker.serving.outcomes import Outcome, OutcomeStore, Prediction
from tests.support.stack import REDIS


def simulate(
    project: str, per_version: dict[str, tuple[int, float]], seed: int = 7
) -> dict[str, tuple[int, int]]:
    """Writes `n` predictions per version with outcomes for the recommended driver completed with
    probability `p` (every 4th also an outcome for another driver; every 5th no outcome at all).
    Returns per version the (completed, outcomes) that were written for the recommended driver."""
    rng = random.Random(seed)
    truth: dict[str, tuple[int, int]] = {}
    predictions, outcomes = [], []
    for version, (n, p) in per_version.items():
        completed = judged = 0
        for i in range(n):
            request_id = uuid.uuid4().hex
            score = rng.random()
            predictions.append(
                Prediction(request_id, "driver-ranker", version, "champion", 1001, score, 5, time.time())
            )
            if i % 5 == 4:
                continue
            outcome = rng.random() < p
            outcomes.append(Outcome(request_id, 1001, outcome))
            completed, judged = completed + outcome, judged + 1
            if i % 4 == 0:
                outcomes.append(Outcome(request_id, 1002, not outcome))  # not the model's pick
        truth[version] = (completed, judged)

    async def write() -> None:
        store = OutcomeStore(aioredis.Redis.from_url(f"redis://{REDIS}"), project, 3600, len(predictions))
        for prediction in predictions:
            store.record(prediction)
        writer = asyncio.create_task(store.write_forever())
        await store.flush()
        writer.cancel()
        for start in range(0, len(outcomes), 1000):
            result = await store.record_outcomes(outcomes[start : start + 1000])
            assert result.unknown is None and not result.conflicting

    asyncio.run(write())
    return truth


@pytest.fixture
def project():
    name = f"t_ab_{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(f"redis://{REDIS}")
    for key in client.scan_iter(match=f"dr:{name}:*", count=1000):
        client.delete(key)


def test_the_report_counts_the_recommended_drivers_outcomes_and_names_the_better_version(project):
    truth = simulate(project, {"1": (1000, 0.45), "2": (1000, 0.60)})
    rows = joined(*read_log(redis.Redis.from_url(f"redis://{REDIS}"), project))
    text, figures = report(rows, champion_version="1")
    for version, (completed, judged) in truth.items():
        assert figures[version]["requests"] == 1000
        assert (figures[version]["rate"].completed, figures[version]["rate"].outcomes) == (completed, judged)
    assert min(judged for _, judged in truth.values()) >= MIN_OUTCOMES
    assert "v2 vs v1: v2 completes more trips" in text
    d = figures["2"]["difference"]
    assert d.low < 0.15 < d.high and d.p_value < 1e-6


def test_no_winner_before_the_minimum_sample(project, tmp_path):
    simulate(project, {"1": (120, 0.3), "2": (120, 0.9)})
    rows = joined(*read_log(redis.Redis.from_url(f"redis://{REDIS}"), project))
    text, _ = report(rows, champion_version="1")
    assert f"no verdict yet: 96 outcomes, {MIN_OUTCOMES} needed per version" in text


def test_run_writes_the_table_and_the_chart(project, tmp_path, feast_settings, monkeypatch):
    simulate(project, {"1": (50, 0.5)})
    monkeypatch.setattr("driver_ranker.jobs.ab_report.open_store", lambda settings: _Store(project))
    text = run(feast_settings, tmp_path)
    assert (tmp_path / "report.md").read_text().strip() == text.strip()
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Store:
    """The Feast store's two attributes the report reads, for a project of the test's own."""

    def __init__(self, project: str):
        from driver_ranker.config import get_settings
        from driver_ranker.features.store import open_store

        self.project = project
        self.config = open_store(get_settings()).config


def test_the_interval_of_the_difference_covers_the_truth_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    runs, n, p_a, p_b = 2000, 500, 0.55, 0.48
    covered = 0
    for _ in range(runs):
        a, b = Rate(int(rng.binomial(n, p_a)), n), Rate(int(rng.binomial(n, p_b)), n)
        d = difference(a, b)
        covered += d.low <= p_a - p_b <= d.high
    assert 0.935 <= covered / runs <= 0.965, covered / runs
