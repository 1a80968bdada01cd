"""The training join must give each order the statistics of its own time, never later ones."""

import pandas as pd

from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import ORDERS_FILE, STATS_FILE
from driver_ranker.jobs.training import training_frame


def test_training_rows_carry_the_statistics_of_their_order_time(feast_settings):
    data = feast_settings.feast_repo_path / "data"
    stats = pd.read_parquet(data / STATS_FILE).sort_values("event_timestamp")
    orders = pd.read_parquet(data / ORDERS_FILE)
    rows, features = training_frame(open_store(feast_settings), orders)

    expected = pd.merge_asof(
        orders.sort_values("event_timestamp"),
        stats,
        on="event_timestamp",
        by="driver_id",
        direction="backward",
    )
    key = ["event_timestamp", "driver_id", "trip_completed"]
    joined = rows.merge(expected, on=key, suffixes=("", "_expected"))
    assert len(joined) == len(orders)
    for name in features:
        assert (joined[name] == joined[f"{name}_expected"]).all(), name

    # A leaky join (each driver's latest statistics) would differ on nearly every row.
    latest = stats.groupby("driver_id").last()
    leaky = joined.conv_rate.to_numpy() != latest.loc[joined.driver_id, "conv_rate"].to_numpy()
    assert leaky.mean() > 0.9
