"""Reproducible synthetic data: hourly driver statistics and trip orders.

Each driver's statistics drift hour by hour (an AR(1) walk around the driver's own level), and a
trip's outcome is drawn from a logistic function of the statistics *at the order's time*. So a
model can learn the outcome, and a join that leaked later statistics into a training row would
fit measurably worse.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from driver_ranker.config import PROJECT_ROOT, get_settings

logger = logging.getLogger(__name__)

FIRST_DRIVER_ID = 1001
STATS_FILE = "driver_stats.parquet"
ORDERS_FILE = "orders.parquet"

# The outcome model: logit of completing a trip given the driver's statistics at that time.
OUTCOME_INTERCEPT = -0.4
OUTCOME_WEIGHTS = {"conv_rate": 4.0, "acc_rate": 3.5, "log_trips": 0.8}
OUTCOME_NOISE = 0.5


@dataclass(frozen=True)
class DataSpec:
    n_drivers: int = 1000
    days: int = 14
    n_orders: int = 20_000
    seed: int = 42
    end: datetime | None = None
    """Last statistics hour (exclusive); defaults to today's midnight UTC."""

    def window_end(self) -> datetime:
        if self.end is not None:
            return self.end.astimezone(UTC)
        return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ar1_walk(
    rng: np.random.Generator, level: np.ndarray, hours: int, phi: float, sigma: float
) -> np.ndarray:
    """Walks of shape (drivers, hours) that revert to each driver's `level`."""
    walk = np.empty((level.size, hours))
    walk[:, 0] = level + rng.normal(0, sigma / np.sqrt(1 - phi**2), level.size)
    for t in range(1, hours):
        walk[:, t] = level + phi * (walk[:, t - 1] - level) + rng.normal(0, sigma, level.size)
    return walk


def outcome_logit(conv_rate: np.ndarray, acc_rate: np.ndarray, avg_daily_trips: np.ndarray) -> np.ndarray:
    """The true (noise-free) logit of completing a trip; used by the generator and the tests."""
    w = OUTCOME_WEIGHTS
    return (
        OUTCOME_INTERCEPT
        + w["conv_rate"] * (conv_rate - 0.5)
        + w["acc_rate"] * (acc_rate - 0.5)
        + w["log_trips"] * (np.log1p(avg_daily_trips) - np.log1p(60))
    )


def completion_probability(
    conv_rate: np.ndarray, acc_rate: np.ndarray, avg_daily_trips: np.ndarray
) -> np.ndarray:
    """The true probability that a driver with these statistics completes a trip (noise-free)."""
    return _sigmoid(outcome_logit(conv_rate, acc_rate, avg_daily_trips))


def generate(spec: DataSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (hourly driver statistics, trip orders); the same spec gives the same frames."""
    rng = np.random.default_rng(spec.seed)
    hours = spec.days * 24
    end = spec.window_end()
    hour_stamps = pd.date_range(end - timedelta(hours=hours), periods=hours, freq="h", tz=UTC)
    driver_ids = np.arange(FIRST_DRIVER_ID, FIRST_DRIVER_ID + spec.n_drivers, dtype=np.int64)

    conv = _sigmoid(_ar1_walk(rng, rng.normal(0.0, 1.0, spec.n_drivers), hours, 0.95, 0.35))
    acc = _sigmoid(_ar1_walk(rng, rng.normal(0.5, 1.0, spec.n_drivers), hours, 0.95, 0.35))
    trips = np.rint(np.exp(_ar1_walk(rng, rng.normal(4.0, 0.6, spec.n_drivers), hours, 0.9, 0.2)))

    stats = pd.DataFrame(
        {
            "driver_id": np.repeat(driver_ids, hours),
            "event_timestamp": np.tile(hour_stamps, spec.n_drivers),
            "conv_rate": conv.ravel().astype(np.float32),
            "acc_rate": acc.ravel().astype(np.float32),
            "avg_daily_trips": trips.ravel().astype(np.int64),
        }
    )
    # Statistics land in the warehouse a minute after the hour they describe.
    stats["created"] = stats["event_timestamp"] + pd.Timedelta(minutes=1)

    # Orders fall anywhere after the first statistics hour; each sees the last hour before it.
    offsets = rng.uniform(3600.0, hours * 3600.0, spec.n_orders)
    driver_idx = rng.integers(0, spec.n_drivers, spec.n_orders)
    hour_idx = (offsets // 3600).astype(int)
    logit = outcome_logit(
        conv[driver_idx, hour_idx].astype(np.float32),
        acc[driver_idx, hour_idx].astype(np.float32),
        trips[driver_idx, hour_idx],
    ) + rng.normal(0, OUTCOME_NOISE, spec.n_orders)
    orders = pd.DataFrame(
        {
            "event_timestamp": hour_stamps[0] + pd.to_timedelta(np.round(offsets), unit="s"),
            "driver_id": driver_ids[driver_idx],
            "trip_completed": (rng.uniform(size=spec.n_orders) < _sigmoid(logit)).astype(np.int64),
        }
    ).sort_values("event_timestamp", ignore_index=True)
    return stats, orders


def generate_requests(
    data_dir: Path, n_rows: int, drivers_per_request: int = 5, days: float = 7.0
) -> pd.DataFrame:
    """Batch-scoring requests for the statistics under `data_dir`, over the `days` up to their last
    hour: rows of (request_id, driver_id, event_timestamp), `drivers_per_request` rows per request
    sharing one time. About 1% of the drivers are unknown (no statistics), as in real dispatch logs."""
    if not (data_dir / STATS_FILE).exists():
        raise FileNotFoundError(f"{data_dir / STATS_FILE} is missing: run `make data` first")
    stats = pd.read_parquet(data_dir / STATS_FILE, columns=["driver_id", "event_timestamp"])
    latest, n_drivers = stats.event_timestamp.max(), stats.driver_id.nunique()
    rng = np.random.default_rng(n_rows)
    n_requests = -(-n_rows // drivers_per_request)
    seconds = np.round(rng.uniform(0, days * 86400, n_requests))
    at = pd.Timestamp(latest) - pd.to_timedelta(seconds, unit="s")
    driver_ids = rng.integers(FIRST_DRIVER_ID, FIRST_DRIVER_ID + n_drivers, n_rows)
    unknown = rng.uniform(size=n_rows) < 0.01
    driver_ids[unknown] += n_drivers  # past the last driver
    request = np.arange(n_rows) // drivers_per_request
    return pd.DataFrame(
        {
            "request_id": pd.Series(request).map("r{:08d}".format),
            "driver_id": driver_ids,
            "event_timestamp": at[request],
        }
    )


def write(spec: DataSpec, out_dir: Path) -> tuple[Path, Path]:
    """Writes both files under `out_dir` and returns their paths."""
    stats, orders = generate(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_path, orders_path = out_dir / STATS_FILE, out_dir / ORDERS_FILE
    # Microseconds: DuckDB (the offline store) casts no nanosecond time zone timestamps.
    for frame, path in ((stats, stats_path), (orders, orders_path)):
        frame.to_parquet(path, index=False, coerce_timestamps="us")
    return stats_path, orders_path


def main(argv: list[str] | None = None) -> None:
    defaults = DataSpec()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=defaults.n_drivers)
    parser.add_argument("--days", type=int, default=defaults.days)
    parser.add_argument("--orders", type=int, default=defaults.n_orders)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--end", type=datetime.fromisoformat, help="ISO time; default today 00:00 UTC")
    parser.add_argument("--out", type=Path, default=get_settings().feast_repo_path / "data")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    parser.add_argument(
        "--requests",
        type=int,
        metavar="ROWS",
        help="instead, write ROWS example batch requests (for `make batch`) to --requests-out",
    )
    parser.add_argument(
        "--requests-out", type=Path, default=PROJECT_ROOT / "artifacts" / "batch" / "requests.parquet"
    )
    args = parser.parse_args(argv)
    if args.requests:
        try:
            requests = generate_requests(args.out, args.requests)
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None
        args.requests_out.parent.mkdir(parents=True, exist_ok=True)
        requests.to_parquet(args.requests_out, index=False)
        print(f"wrote {args.requests} batch requests to {args.requests_out}")
        return
    if (args.out / STATS_FILE).exists() and (args.out / ORDERS_FILE).exists() and not args.force:
        print(f"data: {args.out} already holds {STATS_FILE} and {ORDERS_FILE}; --force rewrites them")
        return
    spec = DataSpec(args.drivers, args.days, args.orders, args.seed, args.end)
    stats_path, orders_path = write(spec, args.out)
    print(
        f"wrote {stats_path} and {orders_path} ({spec.n_drivers} drivers, {spec.days} days, seed {spec.seed})"
    )


if __name__ == "__main__":
    main()
