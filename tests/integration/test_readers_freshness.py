"""Feature freshness: statistics older than the feature view's ttl (2 days) are reported stale, not
scored, by both readers; fresh ones come with their age."""

import asyncio
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from driver_ranker.features.online import FeastSdkReader, RedisFeatureReader, _rows
from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, repo_settings, teardown_repo, write_aged_statistics

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SERVICE = "driver_ranker_v1"
OLD = {900001: timedelta(days=3), 900002: timedelta(days=2, minutes=5), 900003: timedelta(days=30)}
FRESH = {900004: timedelta(hours=1), 900005: timedelta(days=1, hours=23, minutes=50), 900006: timedelta(0)}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    repo = make_feast_repo(tmp_path_factory.mktemp("freshness"), DataSpec(n_drivers=20, days=2, n_orders=100))
    settings = repo_settings(repo)
    yield settings
    teardown_repo(settings)


def written_statistics(settings) -> tuple[pd.DataFrame, float]:
    return write_aged_statistics(settings, OLD | FRESH)


@pytest.mark.parametrize("reader_class", [RedisFeatureReader, FeastSdkReader])
def test_statistics_older_than_the_ttl_are_stale_and_fresh_ones_have_their_age(settings, reader_class):
    frame, written_at = written_statistics(settings)
    reader = reader_class(open_store(settings), SERVICE, FEATURES, 1.0)
    ids = [*OLD, 99999, *FRESH, 900001]
    rows = asyncio.run(reader.read(ids))
    read_at = time.time()
    assert rows.stale_ids == list(OLD)
    assert rows.driver_ids == list(FRESH)
    assert rows.unknown_ids == [99999]
    expected_ages = np.array([age.total_seconds() for age in FRESH.values()]) + (read_at - written_at)
    np.testing.assert_allclose(rows.ages_s, expected_ages, atol=3)
    expected = frame.loc[list(FRESH), list(FEATURES)].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(rows.matrix, expected, rtol=1e-6)


def test_direct_reader_and_sdk_agree_on_staleness_and_ages(settings):
    written_statistics(settings)
    store = open_store(settings)
    ids = [*FRESH, *OLD, *range(1001, 1021)]

    async def both():
        direct = RedisFeatureReader(store, SERVICE, FEATURES, 1.0)
        sdk = FeastSdkReader(store, SERVICE, FEATURES, 1.0)
        return await direct.read(ids), await sdk.read(ids)

    a, b = asyncio.run(both())
    assert (a.driver_ids, a.stale_ids, a.unknown_ids) == (b.driver_ids, b.stale_ids, b.unknown_ids)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_allclose(a.ages_s, b.ages_s, atol=1)


@pytest.mark.parametrize("ttl_s", [0.0, 172800.0])
def test_a_ttl_of_zero_means_never_stale(ttl_s):
    now = 1_800_000_000.0
    rows = _rows([1, 2, 3], [[0.5], [0.6], [None]], [[now - 3e7], [now - 60], [now]], [ttl_s], 1, now)
    assert rows.unknown_ids == [3]
    if ttl_s:
        assert (rows.driver_ids, rows.stale_ids, rows.ages_s.tolist()) == ([2], [1], [60.0])
    else:
        assert (rows.driver_ids, rows.stale_ids, rows.ages_s.tolist()) == ([1, 2], [], [3e7, 60.0])
