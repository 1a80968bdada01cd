"""The direct reader on a Redis Cluster (3 masters, 3 replicas) and on Redis Sentinel (a master, a
replica, 3 sentinels), real processes on loopback: `make features`' apply and materialize write
there, and the direct reader returns exactly what Feast's SDK returns, unknown and stale drivers
included; on the cluster, in one call per master."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import numpy as np
import pytest
import redis

from driver_ranker.features.online import FeastSdkReader, RedisFeatureReader, open_reader
from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import DataSpec
from tests.support.stack import make_feast_repo, repo_settings, write_aged_statistics
from tests.support.topologies import SENTINEL_MASTER, redis_cluster, redis_sentinel

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SERVICE = "driver_ranker_v1"
STALE = {900001: timedelta(days=3), 900002: timedelta(days=30)}
FRESH = {900003: timedelta(hours=1), 900004: timedelta(0)}
IDS = [*range(1001, 1041), *STALE, 99999, *FRESH, 1001, 0]


@pytest.fixture(scope="module", params=["redis_cluster", "redis_sentinel"])
def topology(request, tmp_path_factory):
    """Settings of a Feast repo applied and materialized on the topology; the topology."""
    folder = tmp_path_factory.mktemp(request.param)
    servers = redis_cluster if request.param == "redis_cluster" else redis_sentinel
    with servers(folder / "redis") as topology:
        overrides = {"redis_type": request.param, "redis_sentinel_master": SENTINEL_MASTER}
        connection = topology.connection_string
        if request.param == "redis_cluster":  # as Feast's own cluster example writes it
            connection += ",skip_full_coverage_check=true"
        repo = make_feast_repo(folder, DataSpec(n_drivers=40, days=2, n_orders=100), connection, **overrides)
        settings = repo_settings(repo, connection, **overrides)
        write_aged_statistics(settings, STALE | FRESH)
        yield settings, topology


def test_the_direct_reader_returns_what_feasts_sdk_returns(topology):
    settings, _ = topology
    store = open_store(settings)

    async def both():
        direct = open_reader(store, SERVICE, FEATURES, 2.0)
        sdk = FeastSdkReader(store, SERVICE, FEATURES, 2.0)
        return direct, await direct.read(IDS), await sdk.read(IDS), await direct.readiness()

    direct, a, b, reason = asyncio.run(both())
    assert isinstance(direct, RedisFeatureReader)
    assert a.driver_ids == [*range(1001, 1041), *FRESH]
    assert (a.stale_ids, a.unknown_ids) == (list(STALE), [99999, 0])
    assert (a.driver_ids, a.stale_ids, a.unknown_ids) == (b.driver_ids, b.stale_ids, b.unknown_ids)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_allclose(a.ages_s, b.ages_s, atol=1)
    assert reason is None


@pytest.mark.parametrize("topology", ["redis_cluster"], indirect=True)
def test_a_cluster_read_is_one_call_per_master(topology):
    settings, cluster = topology
    store = open_store(settings)
    masters = [
        redis.Redis(port=port)
        for port in cluster.servers
        if redis.Redis(port=port).info("replication")["role"] == "master"
    ]
    assert len(masters) == 3

    def evals() -> list[int]:
        return [m.info("commandstats").get("cmdstat_eval", {}).get("calls", 0) for m in masters]

    async def read_twice():
        reader = open_reader(store, SERVICE, FEATURES, 2.0)
        await reader.read(IDS)  # the first read learns the slots
        before = evals()
        rows = await reader.read(IDS)
        return before, rows

    before, rows = asyncio.run(read_twice())
    assert len(rows.driver_ids) == 42
    assert [after - b for after, b in zip(evals(), before, strict=True)] == [1, 1, 1]
