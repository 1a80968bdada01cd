"""Readiness of the online readers against redis-servers of the tests' own: it says no when Redis
does not answer, refuses the direct reader's script, or holds no rows; it stays cheap."""

import asyncio
import contextlib
import os
import subprocess
import sys

import httpx
import pytest
import redis

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.errors import DependencyUnavailable, FeatureStoreUnavailable
from driver_ranker.features import online
from driver_ranker.features.online import FeastSdkReader, RedisFeatureReader, open_reader
from driver_ranker.features.store import apply, materialize, open_store, redis_address, require_redis
from driver_ranker.jobs.data import DataSpec
from driver_ranker.ops.processes import SERVING_ENV, free_port, stop_process_group, wait_for
from tests.support.stack import make_feast_repo, redis_server, repo_settings, settings_env

FEATURES = ("conv_rate", "acc_rate", "avg_daily_trips")
SERVICE = "driver_ranker_v1"
SMALL = DataSpec(n_drivers=20, days=2, n_orders=100)
PASSWORD = "pw-5d8e1c"


def readers(store):
    return [RedisFeatureReader(store, SERVICE, FEATURES, 0.5), FeastSdkReader(store, SERVICE, FEATURES, 0.5)]


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()
    }


def test_readiness_is_no_on_a_redis_that_restarted_empty_until_materialized(tmp_path, monkeypatch):
    monkeypatch.setattr(online, "READINESS_CACHE_S", 0.0)

    def probes(settings):
        # Fresh readers each time: a reader serves the one event loop it first ran in.
        async def run(pair):
            return [await reader.readiness() for reader in pair]

        return asyncio.run(run(readers(open_store(settings))))

    with redis_server() as (_, address):
        repo = make_feast_repo(tmp_path, SMALL, redis=address)
        settings = repo_settings(repo, redis=address)
        assert probes(settings) == [None, None]
    with redis_server(int(address.rsplit(":", 1)[1])):  # the same address, nothing in it
        for reason in probes(settings):
            assert reason is not None and address in reason
            assert "holds no features of ['driver_stats']" in reason and "make features" in reason
        materialize(apply(settings))
        assert probes(settings) == [None, None]


def test_readiness_checks_one_remembered_key_and_scans_only_when_it_is_gone(tmp_path, monkeypatch):
    with redis_server() as (_, address):
        repo = make_feast_repo(tmp_path, SMALL, redis=address)
        settings = repo_settings(repo, redis=address)
        admin = redis.Redis.from_url(f"redis://{address}")

        async def scenario():
            reader = RedisFeatureReader(open_store(settings), SERVICE, FEATURES, 0.5)
            assert await reader.readiness() is None  # finds a key by SCAN, remembers it
            admin.config_resetstat()
            for _ in range(20):  # probes within READINESS_CACHE_S: answered from memory
                assert await reader.readiness() is None
            assert command_calls(admin) == {"config|resetstat": 1}
            monkeypatch.setattr(online, "READINESS_CACHE_S", 0.0)
            for _ in range(5):
                assert await reader.readiness() is None
            # One round trip each: the read's script, running one HMGET of the `_ts:` field.
            assert command_calls(admin) == {"config|resetstat": 1, "info": 1, "evalsha": 5, "hmget": 5}
            admin.delete(reader._rows_probe._key)  # the remembered driver's row is gone
            assert await reader.readiness() is None  # another driver's row is found
            calls = command_calls(admin)
            assert calls["scan"] >= 1 and calls["evalsha"] >= 7
            assert (await reader.read([1001, 1002])).driver_ids  # reads still serve
            admin.flushall()
            reason = await reader.readiness()
            assert reason is not None and "holds no features of ['driver_stats']" in reason

        asyncio.run(scenario())


def test_a_redis_user_without_scripting_makes_the_direct_reader_not_ready_with_the_fix(tmp_path):
    with redis_server() as (_, address):
        admin = redis.Redis.from_url(f"redis://{address}")
        admin.acl_setuser(
            "ranker", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all", "-@scripting"]
        )
        connection = f"{address},username=ranker,password={PASSWORD}"
        repo = make_feast_repo(tmp_path, SMALL, redis=connection)  # Feast's writes need no script
        store = open_store(repo_settings(repo, redis=connection))

        async def scenario():
            direct = open_reader(store, SERVICE, FEATURES, 0.5)
            assert isinstance(direct, RedisFeatureReader)
            reason = await direct.readiness()
            assert reason is not None and "+@scripting" in reason and "FEATURE_READER=feast-sdk" in reason
            with pytest.raises(FeatureStoreUnavailable, match="refused"):
                await direct.read([1001])
            sdk = open_reader(store, SERVICE, FEATURES, 0.5, force_sdk=True)
            assert await sdk.readiness() is None
            assert (await sdk.read([1001, 99999])).driver_ids == [1001]
            return reason

        reason = asyncio.run(scenario())
        assert PASSWORD not in reason


def test_errors_name_redis_by_host_and_port_never_the_password(tmp_path):
    with redis_server(password=PASSWORD) as (proc, address):
        connection = f"password={PASSWORD},{address}"  # the password first
        assert redis_address(connection) == address
        repo = make_feast_repo(tmp_path, SMALL, redis=connection)
        store = open_store(repo_settings(repo, redis=connection))
        pair = readers(store)

        async def probes():
            return [await r.readiness() for r in pair]

        assert asyncio.run(probes()) == [None, None]  # the password works
        proc.terminate()
        proc.wait(5)
        messages = []
        for reader in readers(store):

            async def fail(reader=reader):
                with pytest.raises(FeatureStoreUnavailable) as failed:
                    await reader.read([1001])
                return [str(failed.value), await reader.readiness()]

            messages += asyncio.run(fail())
        with pytest.raises(DependencyUnavailable) as down:
            require_redis(store)
        messages.append(str(down.value))
        for message in messages:
            assert f"Redis at {address}" in message
            assert PASSWORD not in message


def test_readyz_is_503_while_redis_refuses_the_script_and_the_log_says_why(
    tmp_path, feast_settings, champion
):
    """The same refusal through the real server: /readyz says no, /inference answers 503, and the
    log names the grant to add."""
    with redis_server() as (_, address):
        admin = redis.Redis.from_url(f"redis://{address}")
        admin.acl_setuser(
            "ranker", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all", "-@scripting"]
        )
        connection = f"{address},username=ranker,password={PASSWORD}"
        repo = make_feast_repo(tmp_path, SMALL, redis=connection)
        settings = repo_settings(
            repo, redis=connection, mlflow_dir=feast_settings.mlflow_artifact_root.parent
        )
        port, log_path = free_port(), tmp_path / "ranker.log"
        env = (
            os.environ | settings_env(settings) | {"WORKERS": "1", "BENTOML_HOME": str(tmp_path / "bentoml")}
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", "service:DriverRanker", "--port", str(port)],
                cwd=PROJECT_ROOT, env=env | SERVING_ENV, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:

            def readyz() -> int | None:
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(f"{url}/readyz", timeout=2).status_code
                return None

            wait_for(lambda: readyz() is not None, 90, "the server to answer /readyz")
            wait_for(lambda: "+@scripting" in log_path.read_text(), 10, "the not-ready reason in the log")
            assert readyz() == 503
            answer = httpx.post(f"{url}/inference", json={"driver_ids": [1001]}, timeout=5)
            assert answer.status_code == 503 and "refused the read" in answer.json()["error"]
        finally:
            stop_process_group(proc)
    assert PASSWORD not in log_path.read_text()
