"""Many swaps in a real `bentoml serve` with two workers: the per-worker version gauge keeps one series
per live worker (none per swap, none for a killed worker), and worker memory stays flat."""

from __future__ import annotations

import os
import signal

import httpx
import psutil
import pytest

from driver_ranker.config import Settings
from driver_ranker.jobs.training import train
from driver_ranker.model.registry import connect
from driver_ranker.ops.processes import wait_for
from driver_ranker.ops.release import promote
from tests.support.metrics import served_versions
from tests.support.registry import register_logistic
from tests.support.stack import ranker_server, repo_settings

INTERVAL = 0.5
SWAPS = 50
BODY = {"driver_ids": [1001, 1002, 1003]}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, feast_settings) -> tuple[Settings, str, str]:
    settings = repo_settings(feast_settings.feast_repo_path, mlflow_dir=tmp_path_factory.mktemp("swaps"))
    return settings, train(settings).version, register_logistic(settings)


def version_series(url: str) -> dict[str, str]:
    return served_versions(httpx.get(f"{url}/metrics", timeout=5).text)


def worker_pids(url: str, expected: int = 2) -> set[int]:
    """The workers' pids, as /model reports them; connections land where the kernel puts them."""
    pids: set[int] = set()
    for _ in range(400):
        pids.add(httpx.get(f"{url}/model").json()["worker_pid"])
        if len(pids) >= expected:
            break
    return pids


def test_swaps_leave_one_series_per_live_worker_and_flat_memory(registry):
    settings, v1, v2 = registry
    client = connect(settings)
    with ranker_server(settings, workers=2, extra_env={"REGISTRY_CHECK_INTERVAL_S": str(INTERVAL)}) as url:
        pids = worker_pids(url)
        assert len(pids) == 2
        rss: list[float] = []
        for swap in range(1, SWAPS + 1):
            version = v2 if swap % 2 else v1
            promote(client, settings, version)
            wait_for(
                lambda v=version: set(version_series(url).values()) == {v},
                20 * INTERVAL,
                f"swap {swap}",
            )
            assert httpx.post(f"{url}/inference", json=BODY).json()["model"]["version"] == version
            if swap in (10, SWAPS):
                rss.append(sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20)
        series = version_series(url)
        assert set(series) == {str(p) for p in pids}, series  # one series per worker after 50 swaps
        growth = rss[1] - rss[0]
        print(f"worker RSS after 10 swaps {rss[0]:.1f} MB, after {SWAPS}: {rss[1]:.1f} MB (two workers)")
        assert growth < 8, f"workers grew {growth:.1f} MB over {SWAPS - 10} swaps"

        # A worker killed outright: BentoML starts another, and the dead one's series goes.
        killed = min(pids)
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: len(worker_pids(url) - pids) == 1, 60, "a new worker")
        wait_for(
            lambda: str(killed) not in version_series(url), 10 * INTERVAL, "the dead worker's series gone"
        )
        assert len(version_series(url)) == 2
