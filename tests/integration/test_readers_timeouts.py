"""A frozen online store: reads fail within FEATURE_READ_TIMEOUT_S (the service answers 503) and
leave no blocked threads behind; reads succeed again once it thaws."""

import asyncio
import signal
import sqlite3
import threading
import time

import numpy as np
import pytest

from driver_ranker.errors import FeatureStoreUnavailable
from driver_ranker.features import online
from driver_ranker.features.online import FeastSdkReader, RedisFeatureReader, open_reader
from driver_ranker.features.store import apply, materialize, open_store
from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, redis_server, repo_settings, teardown_repo

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SERVICE = "driver_ranker_v1"
SMALL = DataSpec(n_drivers=20, days=2, n_orders=100)
TIMEOUT_S = 0.25
MARGIN_S = 0.15
READS = 20
IDS = [1001, 1002, 1003, 99999]


async def frozen_reads(reader) -> list[float]:
    """Seconds each of READS reads took to fail."""
    took = []
    for _ in range(READS):
        started = time.monotonic()
        with pytest.raises(FeatureStoreUnavailable, match="did not answer"):
            await reader.read(IDS)
        took.append(time.monotonic() - started)
    return took


@pytest.mark.parametrize("force_sdk", [True, False], ids=["feast-sdk", "redis-direct"])
def test_frozen_redis_fails_reads_within_the_timeout_without_threads_then_recovers(
    tmp_path, monkeypatch, force_sdk
):
    monkeypatch.setattr(online, "READINESS_CACHE_S", 0.0)  # each probe asks Redis
    with redis_server() as (proc, address):
        repo = make_feast_repo(tmp_path, SMALL, redis=address)
        store = open_store(repo_settings(repo, redis=address))

        async def scenario():
            reader = open_reader(store, SERVICE, FEATURES, TIMEOUT_S, force_sdk=force_sdk)
            assert isinstance(reader, FeastSdkReader if force_sdk else RedisFeatureReader)
            before = await reader.read(IDS)
            assert before.driver_ids == IDS[:3]
            threads = threading.active_count()
            proc.send_signal(signal.SIGSTOP)
            try:
                took = await frozen_reads(reader)
                grown = threading.active_count() - threads
                started = time.monotonic()
                reason = await reader.readiness()
                probe_s = time.monotonic() - started
            finally:
                proc.send_signal(signal.SIGCONT)
            after = await reader.read(IDS)
            return before, after, took, grown, reason, probe_s, await reader.readiness()

        before, after, took, grown, reason, probe_s, ready = asyncio.run(scenario())
    print(f"{'sdk' if force_sdk else 'direct'}: frozen reads failed in {min(took):.3f}-{max(took):.3f} s")
    assert max(took) < TIMEOUT_S + MARGIN_S
    assert grown <= 0
    assert reason is not None and "does not answer" in reason and probe_s < TIMEOUT_S + MARGIN_S
    # Same answers as before the freeze: no reply of a cancelled read is taken for a later one.
    assert (after.driver_ids, after.unknown_ids) == (before.driver_ids, before.unknown_ids)
    np.testing.assert_array_equal(after.matrix, before.matrix)
    assert ready is None


def test_reads_sharing_a_round_trip_fail_together_within_the_timeout_then_recover(tmp_path):
    """Reads that wait for a round trip in flight: a frozen Redis fails every one of them within
    the timeout, and after it thaws each read gets its own drivers' rows again."""
    sets = [[1001 + i % 20, 99999, 1001 + (7 * i) % 20] for i in range(READS)]
    with redis_server() as (proc, address):
        repo = make_feast_repo(tmp_path, SMALL, redis=address)
        store = open_store(repo_settings(repo, redis=address))

        async def scenario():
            reader = RedisFeatureReader(store, SERVICE, FEATURES, TIMEOUT_S)
            alone = [await reader.read(ids) for ids in sets]
            proc.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                frozen = await asyncio.gather(*(reader.read(ids) for ids in sets), return_exceptions=True)
                took = time.monotonic() - started
            finally:
                proc.send_signal(signal.SIGCONT)
            together = await asyncio.gather(*(reader.read(ids) for ids in sets))
            return alone, frozen, took, together

        alone, frozen, took, together = asyncio.run(scenario())
    assert all(isinstance(f, FeatureStoreUnavailable) for f in frozen), frozen
    assert took < TIMEOUT_S + MARGIN_S
    for a, b in zip(alone, together, strict=True):
        assert (b.driver_ids, b.unknown_ids) == (a.driver_ids, a.unknown_ids)
        np.testing.assert_array_equal(b.matrix, a.matrix)


def test_locked_sqlite_store_holds_at_most_the_sync_read_threads(tmp_path):
    repo = make_feast_repo(tmp_path, SMALL)
    redis_settings = repo_settings(repo)
    try:
        settings = redis_settings.model_copy(update={"online_store": "sqlite"})
        materialize(apply(settings))
        store = open_store(settings)
        reader = open_reader(store, SERVICE, FEATURES, TIMEOUT_S)
        assert isinstance(reader, FeastSdkReader)
        lock = sqlite3.connect(repo / "data" / "online.db", isolation_level=None)

        async def scenario():
            before = await reader.read(IDS)
            threads = threading.active_count()
            lock.execute("BEGIN EXCLUSIVE")  # readers now wait on SQLite's busy timeout
            try:
                took = await frozen_reads(reader)
                grown = threading.active_count() - threads
            finally:
                lock.execute("ROLLBACK")
            await asyncio.sleep(0.2)
            return before, await reader.read(IDS), took, grown

        before, after, took, grown = asyncio.run(scenario())
        print(f"sqlite: locked reads failed in {min(took):.3f}-{max(took):.3f} s, {grown} threads more")
        assert max(took) < TIMEOUT_S + MARGIN_S
        assert grown <= online._SYNC_READ_THREADS
        assert after.driver_ids == before.driver_ids == IDS[:3]
        np.testing.assert_array_equal(after.matrix, before.matrix)
    finally:
        teardown_repo(redis_settings)
