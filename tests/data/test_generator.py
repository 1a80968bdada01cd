from datetime import UTC, datetime

import numpy as np
import pandas as pd

from driver_ranker.jobs.data import FIRST_DRIVER_ID, DataSpec, generate, outcome_logit, write

SMALL = DataSpec(n_drivers=50, days=3, n_orders=4000, seed=7, end=datetime(2026, 1, 1, tzinfo=UTC))


def test_same_seed_gives_the_same_files(tmp_path):
    a = write(SMALL, tmp_path / "a")
    b = write(SMALL, tmp_path / "b")
    for path_a, path_b in zip(a, b, strict=True):
        assert path_a.read_bytes() == path_b.read_bytes()


def test_another_seed_gives_other_data():
    stats_a, orders_a = generate(SMALL)
    stats_b, orders_b = generate(DataSpec(**{**SMALL.__dict__, "seed": 8}))
    assert not np.allclose(stats_a.conv_rate, stats_b.conv_rate)
    assert not orders_a.trip_completed.equals(orders_b.trip_completed)


def test_statistics_shape_and_types():
    stats, orders = generate(SMALL)
    assert len(stats) == 50 * 3 * 24
    assert stats.driver_id.min() == FIRST_DRIVER_ID and stats.driver_id.max() == FIRST_DRIVER_ID + 49
    assert stats.conv_rate.dtype == np.float32 and stats.avg_daily_trips.dtype == np.int64
    assert stats.conv_rate.between(0, 1).all() and stats.acc_rate.between(0, 1).all()
    assert (stats.created > stats.event_timestamp).all()
    assert stats.event_timestamp.max() < pd.Timestamp(SMALL.end)
    assert set(orders.trip_completed.unique()) == {0, 1}
    assert orders.event_timestamp.is_monotonic_increasing


def test_outcomes_follow_the_statistics_at_order_time():
    stats, orders = generate(SMALL)
    at_order = pd.merge_asof(
        orders,
        stats.sort_values("event_timestamp"),
        on="event_timestamp",
        by="driver_id",
        direction="backward",
    )
    logit = outcome_logit(
        at_order.conv_rate.values, at_order.acc_rate.values, at_order.avg_daily_trips.values
    )
    top = at_order.trip_completed[logit > np.quantile(logit, 0.75)].mean()
    bottom = at_order.trip_completed[logit < np.quantile(logit, 0.25)].mean()
    assert top - bottom > 0.4, (top, bottom)
