"""Online reads against real Redis: the direct reader returns exactly what Feast's SDK returns."""

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

from driver_ranker.errors import DependencyUnavailable, FeatureStoreUnavailable, MissingFeatures
from driver_ranker.features import online
from driver_ranker.features.online import (
    FeastSdkReader,
    RedisFeatureReader,
    open_reader,
)
from driver_ranker.features.store import apply, materialize, open_store, redis_client, require_redis
from driver_ranker.jobs.data import STATS_FILE
from tests.support.stack import free_port, repo_settings

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SERVICE = "driver_ranker_v1"


def test_online_store_holds_the_latest_statistics_of_every_driver(feast_settings):
    store = open_store(feast_settings)
    stats = pd.read_parquet(feast_settings.feast_repo_path / "data" / STATS_FILE)
    latest = stats.sort_values("event_timestamp").groupby("driver_id").last()
    ids = [*latest.index.tolist(), 99999]
    online = store.get_online_features(
        features=store.get_feature_service(SERVICE), entity_rows=[{"driver_id": i} for i in ids]
    ).to_dict()
    for name in FEATURES:
        assert online[name][-1] is None  # the unknown driver
        np.testing.assert_allclose(online[name][:-1], latest[name].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("ids", [[1001, 1002, 99999, 1003, 0], [*range(1001, 1101), 123456]])
def test_direct_reader_equals_feast_sdk(feast_settings, ids):
    store = open_store(feast_settings)
    direct = RedisFeatureReader(store, SERVICE, FEATURES, 1.0)
    sdk = FeastSdkReader(store, SERVICE, FEATURES, 1.0)
    a, b = asyncio.run(direct.read(ids)), asyncio.run(sdk.read(ids))
    assert a.driver_ids == b.driver_ids and a.unknown_ids == b.unknown_ids
    assert a.unknown_ids == [i for i in ids if i < 1001 or i > 2000]
    assert a.stale_ids == b.stale_ids == []  # the generated data ends at midnight: within the 2-day ttl
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.matrix.shape == (len(a.driver_ids), 3)
    # The latest statistics of every driver are of the last hour before midnight UTC.
    stats = pd.read_parquet(feast_settings.feast_repo_path / "data" / STATS_FILE)
    expected = time.time() - stats["event_timestamp"].max().timestamp()
    for ages in (a.ages_s, b.ages_s):
        assert ages.shape == (len(a.driver_ids),)
        np.testing.assert_allclose(ages, expected, atol=5)


def test_reads_past_the_decoded_table_start_it_again_with_the_same_values(feast_settings, monkeypatch):
    """The direct reader keeps decoded replies in a table of DECODED_ROWS rows; reads of more
    drivers than it holds start it again, and every read still equals Feast's SDK."""
    monkeypatch.setattr(online, "DECODED_ROWS", 8)
    store = open_store(feast_settings)
    reads = ([1001, 1002, 1003, 1004, 1005], [1006, 1007, 1001, 99999], [1001, 1002], [*range(1010, 1030)])

    async def read_all():
        direct = RedisFeatureReader(store, SERVICE, FEATURES, 1.0)
        sdk = FeastSdkReader(store, SERVICE, FEATURES, 1.0)
        pairs = []
        for ids in reads:
            pairs.append((await direct.read(ids), await sdk.read(ids)))
            assert len(direct._slot_of) <= max(8, len(ids))
        return pairs

    for a, b in asyncio.run(read_all()):
        assert (a.driver_ids, a.unknown_ids) == (b.driver_ids, b.unknown_ids)
        np.testing.assert_array_equal(a.matrix, b.matrix)


def test_reader_follows_the_model_feature_order(feast_settings):
    store = open_store(feast_settings)
    order = ("avg_daily_trips", "conv_rate", "acc_rate")
    a = asyncio.run(RedisFeatureReader(store, SERVICE, order, 1.0).read([1001]))
    b = asyncio.run(RedisFeatureReader(store, SERVICE, FEATURES, 1.0).read([1001]))
    c = asyncio.run(FeastSdkReader(store, SERVICE, order, 1.0).read([1001]))
    np.testing.assert_array_equal(a.matrix[0], b.matrix[0][[2, 0, 1]])
    np.testing.assert_array_equal(a.matrix, c.matrix)


def test_a_driver_asked_twice_counts_once(feast_settings):
    store = open_store(feast_settings)
    for reader in (
        RedisFeatureReader(store, SERVICE, FEATURES, 1.0),
        FeastSdkReader(store, SERVICE, FEATURES, 1.0),
    ):
        rows = asyncio.run(reader.read([1002, 1001, 1002, 99999, 99999]))
        assert (rows.driver_ids, rows.unknown_ids, rows.matrix.shape) == ([1002, 1001], [99999], (2, 3))


@pytest.mark.parametrize("force_sdk", [False, True])
def test_a_feature_the_service_does_not_serve_is_refused_by_every_reader(feast_settings, force_sdk):
    with pytest.raises(MissingFeatures, match="surge_factor"):
        open_reader(
            open_store(feast_settings), SERVICE, (*FEATURES, "surge_factor"), 1.0, force_sdk=force_sdk
        )
    with pytest.raises(MissingFeatures, match="no_such_service"):
        open_reader(open_store(feast_settings), "no_such_service", FEATURES, 1.0, force_sdk=force_sdk)


def test_feature_reader_setting_forces_the_sdk(feast_settings):
    store = open_store(feast_settings)
    assert isinstance(open_reader(store, SERVICE, FEATURES, 1.0), RedisFeatureReader)
    reader = open_reader(store, SERVICE, FEATURES, 1.0, force_sdk=True)
    assert isinstance(reader, FeastSdkReader)
    assert asyncio.run(reader.read([1001])).driver_ids == [1001]


def test_sqlite_online_store_is_read_through_the_sdk_with_the_same_values(feast_settings):
    settings = feast_settings.model_copy(update={"online_store": "sqlite"})
    materialize(apply(settings))
    reader = open_reader(open_store(settings), SERVICE, FEATURES, 1.0)
    assert isinstance(reader, FeastSdkReader)
    ids = [1001, 1500, 99999]
    on_sqlite = asyncio.run(reader.read(ids))
    on_redis = asyncio.run(RedisFeatureReader(open_store(feast_settings), SERVICE, FEATURES, 1.0).read(ids))
    assert on_sqlite.unknown_ids == on_redis.unknown_ids == [99999]
    np.testing.assert_array_equal(on_sqlite.matrix, on_redis.matrix)
    np.testing.assert_allclose(on_sqlite.ages_s, on_redis.ages_s, atol=5)
    assert asyncio.run(reader.readiness()) is None
    # A feature the service does not serve is refused on this online store too.
    with pytest.raises(MissingFeatures, match="surge_factor"):
        open_reader(open_store(settings), SERVICE, (*FEATURES, "surge_factor"), 1.0)


def test_redis_that_does_not_answer_fails_fast_with_its_address(feast_settings):
    address = f"127.0.0.1:{free_port()}"
    settings = repo_settings(feast_settings.feast_repo_path, redis=address)
    store = open_store(settings)
    for reader in (
        RedisFeatureReader(store, SERVICE, FEATURES, 0.25),
        FeastSdkReader(store, SERVICE, FEATURES, 0.25),
    ):

        async def read_then_probe(reader=reader):
            started = time.monotonic()
            with pytest.raises(FeatureStoreUnavailable, match=address):
                await reader.read([1001])
            assert time.monotonic() - started < 1.0
            return await reader.readiness()

        reason = asyncio.run(read_then_probe())
        assert reason is not None and address in reason and "does not answer" in reason
    with pytest.raises(DependencyUnavailable, match=f"{address}.*redis-server"):
        require_redis(store)


def test_concurrent_reads_share_round_trips_and_each_gets_its_own_rows(feast_settings):
    store = open_store(feast_settings)
    reader = RedisFeatureReader(store, SERVICE, FEATURES, 1.0)
    sets = [[1001 + i, 99999, 1100 - i, 1001 + i] for i in range(16)]
    counters = redis_client(store.config.online_store, 5.0)

    def script_calls() -> int:
        return counters.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    async def scenario():
        alone = [await reader.read(ids) for ids in sets]
        before = script_calls()
        together = await asyncio.gather(*(reader.read(ids) for ids in sets))
        return alone, together, script_calls() - before

    alone, together, calls = asyncio.run(scenario())
    # The first read goes alone, the 15 that arrive meanwhile in one call (other clients of this
    # Redis may add a call or two).
    assert calls <= 4, calls
    for ids, a, b in zip(sets, alone, together, strict=True):
        assert b.driver_ids == a.driver_ids == [ids[0], ids[2]]
        assert b.unknown_ids == a.unknown_ids == [99999]
        np.testing.assert_array_equal(b.matrix, a.matrix)
