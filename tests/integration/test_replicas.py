"""Replicas behind HAProxy under load, started as `make stack REPLICAS=3` starts them
(driver_ranker/ops/balancer.py, with compose's deployment/haproxy.cfg): 3 rankers of 1 worker, 4
client threads posting /inference through HAProxy. A replica killed with SIGKILL mid-run, and
separately a rolling restart (SIGTERM, exit, start, UP in HAProxy, next), cost the clients no failed
request: what a dead or draining replica refused or dropped unanswered is retried on another one."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from driver_ranker.ops.balancer import Balancer, Replicas, balanced_replicas
from tests.support.load import Load
from tests.support.stack import free_port, settings_env

pytestmark = pytest.mark.slow

BODY = {"driver_ids": [1001, 1002, 1003, 1004, 1005]}
SECONDS = 20
REPLICAS = 3


def answered(balancer: Balancer, since: dict[str, int] | None = None) -> dict[str, int]:
    """2xx answers per replica, as HAProxy counted them (less the counts `since`)."""
    rows = [row for row in balancer.stats() if row["svname"] != "BACKEND"]
    return {row["svname"]: int(row["hrsp_2xx"] or 0) - (since or {}).get(row["svname"], 0) for row in rows}


@pytest.fixture(scope="module")
def balanced(feast_settings, champion, tmp_path_factory) -> Iterator[tuple[Replicas, Balancer]]:
    env = os.environ | settings_env(feast_settings)
    folder = tmp_path_factory.mktemp("replicas")
    with balanced_replicas(REPLICAS, env, folder, free_port(), workers=1) as pair:
        yield pair


@pytest.fixture
def all_up(balanced) -> tuple[Replicas, Balancer]:
    """Every replica running and UP in HAProxy, whatever an earlier test left stopped."""
    replicas, balancer = balanced
    for replica in replicas.members:
        if replica.proc is None:
            replicas.start(replica)
        balancer.wait_until(replica.name, "UP", 30)
    return replicas, balancer


def test_a_replica_killed_mid_run_fails_no_request(all_up):
    replicas, balancer = all_up
    victim = replicas.members[1]
    before, counted = balancer.totals(), answered(balancer)
    started = time.monotonic()
    with Load(balancer.url, BODY, timeout_s=10) as load:
        time.sleep(SECONDS / 2)
        killed_at = time.monotonic()
        replicas.kill(victim)
        out_after = balancer.wait_until(victim.name, "DOWN", 10)
        at_kill = answered(balancer, counted)
        time.sleep(max(0.0, SECONDS - (time.monotonic() - started)))
    after = balancer.totals()
    served = answered(balancer, counted)
    print(
        f"\n{load.report('kill -9 of one replica of 3', started)}\n"
        f"HAProxy: {victim.name} DOWN {out_after * 1e3:.0f} ms after the kill; retried "
        f"{after['retried'] - before['retried']}, redispatched {after['redispatched'] - before['redispatched']}; "
        f"answers per replica {served}"
    )
    failed = [(round(sent - killed_at, 3), status) for sent, status, _, _ in load.results if status != 200]
    assert failed == [], f"failed requests (s after the kill, status): {failed[:20]}"
    assert all(served[r.name] > 0 for r in replicas.members), served
    # Once it was out, the others answered everything.
    survivors = [r.name for r in replicas.members if r is not victim]
    assert served[victim.name] == at_kill[victim.name]
    assert all(served[name] > at_kill[name] for name in survivors), (at_kill, served)


def test_a_rolling_restart_fails_no_request(all_up):
    replicas, balancer = all_up
    before, counted = balancer.totals(), answered(balancer)
    steps = []
    started = time.monotonic()
    with Load(balancer.url, BODY, timeout_s=10) as load:
        time.sleep(2)
        for replica in replicas.members:
            drained_in = replicas.stop(replica)  # SIGTERM; it finishes what it accepted, then exits
            out = balancer.states()[replica.name]
            restarted = time.monotonic()
            replicas.start(replica)
            ready_in = time.monotonic() - restarted
            up_in = balancer.wait_until(replica.name, "UP", 30)
            at_up = answered(balancer, counted)[replica.name]
            steps.append((replica.name, drained_in, out, ready_in, up_in, at_up))
        time.sleep(max(2.0, SECONDS - (time.monotonic() - started)))
    after = balancer.totals()
    served = answered(balancer, counted)
    lines = [
        f"  {name}: exited {drained:.1f} s after SIGTERM (HAProxy then saw it {out!r}), ready "
        f"{ready:.1f} s after its start, UP in HAProxy {up:.1f} s later"
        for name, drained, out, ready, up, _ in steps
    ]
    print(
        f"\n{load.report('rolling restart of 3 replicas', started)}\n" + "\n".join(lines) + "\n"
        f"HAProxy: retried {after['retried'] - before['retried']}, redispatched "
        f"{after['redispatched'] - before['redispatched']}; answers per replica {served}"
    )
    failed = [(round(sent - started, 3), status) for sent, status, _, _ in load.results if status != 200]
    assert failed == [], f"failed requests (s after the start, status): {failed[:20]}"
    assert all(drained < 30 for _, drained, *_ in steps), "a replica was killed after the grace period"
    # Each replica takes traffic again once it is back.
    assert all(served[name] > at_up for name, *_, at_up in steps), (steps, served)
