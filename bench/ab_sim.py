"""`make ab-sim`: does the A/B report find the better model, and does the bandit earn its keep?

On the demo data, beside the champion (trained on every feature) a weaker version is trained on
`avg_daily_trips` alone and given the alias `ab-sim`. The same synthetic dispatches (8 candidate
drivers each) are sent three times to a served ranker (2 workers) over HTTP:
- the champion alone: the "better one" every regret is measured against;
- a fixed 50/50 split (canary at 50%), the classic A/B test; then `make ab-report`'s analysis;
- the bandit (ROUTING=bandit), learning from the outcomes as they are posted.
Each trip's outcome is drawn from the data generator's own probability of completion given the
recommended driver's statistics (the truth the models try to learn), with the same random number
per dispatch in every pass. Regret of a dispatch = the truth of the champion's pick minus the
truth of the pick made. Writes artifacts/ab/sim.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.features.store import FEATURE_SERVICE, open_store, redis_client
from driver_ranker.jobs.ab_report import MIN_OUTCOMES, joined, read_log, report
from driver_ranker.jobs.data import FIRST_DRIVER_ID, completion_probability
from driver_ranker.jobs.training import TrainOptions, train
from driver_ranker.model.registry import connect, version_for_alias
from driver_ranker.ops.bootstrap import prepare
from driver_ranker.ops.processes import free_port, serve_until_ready, stop_process_group

OUT = PROJECT_ROOT / "artifacts" / "ab"
ALIAS = "ab-sim"
CANDIDATES = 8
FEEDBACK_EVERY = 50


def truth(settings: Settings) -> dict[int, float]:
    """Each driver's probability of completing a trip, from its online statistics now."""
    store = open_store(settings)
    ids = list(range(FIRST_DRIVER_ID, FIRST_DRIVER_ID + 1000))
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICE), entity_rows=[{"driver_id": i} for i in ids]
    ).to_dict()
    p = completion_probability(
        *(np.array(online[name], dtype=float) for name in ("conv_rate", "acc_rate", "avg_daily_trips"))
    )
    return {i: float(q) for i, q in zip(ids, p, strict=True) if not np.isnan(q)}


def log_client(settings: Settings) -> tuple[redis.Redis, str]:
    """A client of the online store's Redis, which holds the prediction log, and the log's project."""
    store = open_store(settings)
    return redis_client(store.config.online_store, 5.0), store.project


def clear_log(settings: Settings) -> None:
    client, project = log_client(settings)
    for key in client.scan_iter(match=f"dr:{project}:*", count=1000):
        client.delete(key)


def run_pass(
    env: dict[str, str], dispatches: list[tuple[list[int], float]], p_true: dict[int, float]
) -> list[dict]:
    """Serves, sends every dispatch, posts each outcome (in batches, as a dispatch system would);
    returns per dispatch the version that answered and its pick."""
    port = free_port()
    OUT.mkdir(parents=True, exist_ok=True)
    proc = serve_until_ready("service:DriverRanker", port, os.environ | env, OUT / f"sim-{port}.log")
    picks, pending = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for drivers, u in dispatches:
                answer = http.post(
                    "/inference", json={"driver_ids": drivers, "request_id": uuid.uuid4().hex}
                ).json()
                best = answer["best_driver_id"]
                picks.append({"version": answer["model"]["version"], "best": best})
                pending.append(
                    {"request_id": answer["request_id"], "driver_id": best, "completed": u < p_true[best]}
                )
                if len(pending) == FEEDBACK_EVERY:
                    http.post("/feedback", json=pending).raise_for_status()
                    pending = []
            if pending:
                http.post("/feedback", json=pending).raise_for_status()
    finally:
        stop_process_group(proc)
    return picks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dispatches", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    settings = prepare(get_settings().model_copy(update={"demo_data": True}))
    client = connect(settings)
    champion = str(version_for_alias(client, settings.model_name, settings.model_alias).version)
    weak = train(settings, TrainOptions(features=("avg_daily_trips",)))
    assert not weak.champion, "the weaker version must not take the champion alias"
    client.set_registered_model_alias(settings.model_name, ALIAS, weak.version)
    p_true = truth(settings)
    rng = np.random.default_rng(args.seed)
    known = sorted(p_true)
    dispatches = [
        ([int(d) for d in rng.choice(known, CANDIDATES, replace=False)], float(rng.uniform()))
        for _ in range(args.dispatches)
    ]
    workers = {"WORKERS": "2", "PYTHONWARNINGS": "ignore", "PREDICTION_LOG": "true"}
    try:
        clear_log(settings)
        better = run_pass(workers | {"ROUTING": "fixed", "CANARY_PERCENT": "0"}, dispatches, p_true)
        clear_log(settings)
        split_env = {"ROUTING": "fixed", "CANARY_ALIAS": ALIAS, "CANARY_PERCENT": "50"}
        split = run_pass(workers | split_env, dispatches, p_true)
        ab_text, _ = report(joined(*read_log(*log_client(settings))), champion)
        clear_log(settings)
        bandit = run_pass(workers | {"ROUTING": "bandit", "BANDIT_ALIASES": ALIAS}, dispatches, p_true)
        clear_log(settings)
    finally:
        client.delete_registered_model_alias(settings.model_name, ALIAS)

    def regret(picks: list[dict]) -> float:
        return sum(p_true[b["best"]] - p_true[p["best"]] for b, p in zip(better, picks, strict=True))

    def share(picks: list[dict]) -> float:
        return sum(p["version"] == champion for p in picks) / len(picks)

    def completion(picks: list[dict]) -> float:
        return statistics.mean(p_true[p["best"]] for p in picks)

    rows = [
        ("champion alone (the better one)", better),
        ("fixed 50/50 split", split),
        ("bandit (Thompson sampling)", bandit),
    ]
    lines = [
        f"{args.dispatches} dispatches of {CANDIDATES} drivers; champion v{champion} (every feature), "
        f"v{weak.version} on avg_daily_trips alone (holdout AUC {weak.metrics['holdout_auc']:.3f})",
        "",
        "| routing | share to the champion | mean true completion of the pick | regret vs the champion alone |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {share(p):.1%} | {completion(p):.4f} | {regret(p):.1f} |" for name, p in rows),
        "",
        f"A/B report on the 50/50 split (a verdict needs {MIN_OUTCOMES} outcomes per version):",
        "",
        ab_text,
    ]
    text = "\n".join(lines)
    Path(OUT / "sim.md").write_text(text + "\n")
    print(text)
    print(f"wrote {OUT / 'sim.md'}")


if __name__ == "__main__":
    main()
