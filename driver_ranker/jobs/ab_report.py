"""`make ab-report`: did the drivers a model version recommended complete their trips more often?

Joins the prediction log with the trip outcomes posted to /feedback (both in Redis, see
serving/outcomes.py) and prints, per model version: requests, outcomes received for the recommended
driver, its completion rate with a 95% Wilson interval, and calibration (mean predicted score
against observed completion, by score bin); and, between each version and the champion's, the
difference in completion rate with a 95% Newcombe interval and a two-sided two-proportion z-test.
It names a better version only when both have MIN_OUTCOMES outcomes and p < 0.05. Writes
artifacts/ab/report.md and artifacts/ab/report.png.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import redis
from mlflow.exceptions import MlflowException

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.features.store import open_store, redis_client
from driver_ranker.model.registry import connect, version_for_alias

OUT = PROJECT_ROOT / "artifacts" / "ab"
Z95 = 1.959963984540054
MIN_OUTCOMES = 400
"""Outcomes per version before a winner is named: enough to see a 10-point difference around a
50% completion rate 80% of the time at the 5% level (2 x (1.96 + 0.84)^2 x 0.25 / 0.1^2 = 392)."""
ALPHA = 0.05
SCORE_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Rate:
    completed: int
    outcomes: int

    @property
    def value(self) -> float:
        return self.completed / self.outcomes if self.outcomes else math.nan

    def wilson(self, z: float = Z95) -> tuple[float, float]:
        """Wilson's score interval: sound at small samples and rates near 0 or 1, unlike p +- z*se."""
        n = self.outcomes
        if n == 0:
            return (0.0, 1.0)
        p = self.completed / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (centre - half, centre + half)


@dataclass(frozen=True)
class Difference:
    estimate: float
    """Completion rate of the version minus the baseline's."""
    low: float
    high: float
    p_value: float


def difference(version: Rate, baseline: Rate) -> Difference:
    """Newcombe's hybrid interval (from the two Wilson intervals) and a pooled two-proportion z-test."""
    p1, p2 = version.value, baseline.value
    (l1, u1), (l2, u2) = version.wilson(), baseline.wilson()
    estimate = p1 - p2
    low = estimate - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = estimate + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    pooled = (version.completed + baseline.completed) / (version.outcomes + baseline.outcomes)
    se = math.sqrt(pooled * (1 - pooled) * (1 / version.outcomes + 1 / baseline.outcomes))
    p_value = math.erfc(abs(estimate) / se / math.sqrt(2)) if se > 0 else 1.0
    return Difference(estimate, low, high, p_value)


def read_log(client: redis.Redis, project: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The prediction and outcome streams as frames (read in pages of 10,000 entries)."""

    def stream(key: str) -> pd.DataFrame:
        rows, start = [], "-"
        while True:
            page = client.xrange(key, min=start, count=10_000)
            rows += [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in page]
            if len(page) < 10_000:
                return pd.DataFrame(rows)
            start = "(" + page[-1][0].decode()

    return stream(f"dr:{project}:predictions"), stream(f"dr:{project}:feedback")


def joined(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """One row per prediction: version, role, best driver's score, and whether that driver completed
    the trip (NaN without an outcome for it; outcomes for other drivers are not the model's pick)."""
    if predictions.empty:
        return pd.DataFrame(columns=["request_id", "version", "role", "best_score", "completed"])
    preds = predictions.drop_duplicates("request_id", keep="last").copy()
    preds["best_score"] = pd.to_numeric(preds["best_score"], errors="coerce")
    preds["best_driver_id"] = pd.to_numeric(preds["best_driver_id"], errors="coerce")
    if feedback.empty:
        preds["completed"] = math.nan
        return preds
    outcomes = feedback.drop_duplicates(["request_id", "driver_id"], keep="first").copy()
    outcomes["driver_id"] = pd.to_numeric(outcomes["driver_id"])
    outcomes["completed"] = pd.to_numeric(outcomes["completed"]).astype(float)
    return preds.merge(
        outcomes[["request_id", "driver_id", "completed"]],
        left_on=["request_id", "best_driver_id"],
        right_on=["request_id", "driver_id"],
        how="left",
    ).drop(columns="driver_id")


def report(rows: pd.DataFrame, champion_version: str | None) -> tuple[str, dict]:
    """The markdown report and its figures, per version."""
    figures: dict = {}
    # Registry versions are numbers kept as text: "10" after "9".
    for version, group in sorted(rows.groupby("version"), key=lambda item: (len(str(item[0])), str(item[0]))):
        judged = group.dropna(subset=["completed"])
        rate = Rate(int(judged["completed"].sum()), len(judged))
        bins = pd.cut(judged["best_score"], SCORE_BINS, include_lowest=True)
        calibration = judged.groupby(bins, observed=True).agg(
            predicted=("best_score", "mean"), observed=("completed", "mean"), n=("completed", "size")
        )
        figures[str(version)] = {
            "role": ", ".join(sorted(set(group["role"]))),
            "requests": len(group),
            "rate": rate,
            "calibration": calibration,
        }
    baseline = champion_version if champion_version in figures else next(iter(figures), None)
    lines = [
        "| version | role | requests | outcomes | completion (95% CI) | vs baseline (95% CI) | p |",
        "| --- | --- | ---: | ---: | --- | --- | ---: |",
    ]
    verdicts = []
    for version, f in figures.items():
        rate: Rate = f["rate"]
        low, high = rate.wilson()
        cells = [version, f["role"], str(f["requests"]), str(rate.outcomes),
                 f"{rate.value:.3f} ({low:.3f}-{high:.3f})" if rate.outcomes else "-"]  # fmt: skip
        if version == baseline or not rate.outcomes or not figures[baseline]["rate"].outcomes:
            cells += ["baseline" if version == baseline else "-", "-"]
        else:
            base: Rate = figures[baseline]["rate"]
            d = difference(rate, base)
            f["difference"] = d
            cells += [f"{d.estimate:+.3f} ({d.low:+.3f} to {d.high:+.3f})", f"{d.p_value:.3g}"]
            if min(rate.outcomes, base.outcomes) < MIN_OUTCOMES:
                verdicts.append(
                    f"v{version} vs v{baseline}: no verdict yet: {min(rate.outcomes, base.outcomes)} outcomes, "
                    f"{MIN_OUTCOMES} needed per version"
                )
            elif d.p_value < ALPHA:
                better = version if d.estimate > 0 else baseline
                verdicts.append(
                    f"v{version} vs v{baseline}: v{better} completes more trips (p = {d.p_value:.3g})"
                )
            else:
                verdicts.append(f"v{version} vs v{baseline}: no significant difference (p = {d.p_value:.3g})")
        lines.append("| " + " | ".join(cells) + " |")
    calibration_lines = [
        "",
        "Calibration (recommended driver): mean predicted score vs observed completion",
        "",
    ]
    calibration_lines += [
        "| version | score bin | predicted | observed | outcomes |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for version, f in figures.items():
        for interval, row in f["calibration"].iterrows():
            calibration_lines.append(
                f"| {version} | {interval} | {row['predicted']:.3f} | {row['observed']:.3f} | {int(row['n'])} |"
            )
    text = "\n".join(lines + [""] + (verdicts or ["no second version to compare"]) + calibration_lines)
    return text, figures


def chart(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rates, calibration) = plt.subplots(1, 2, figsize=(11, 4.2))
    versions = [v for v, f in figures.items() if f["rate"].outcomes]
    values = [figures[v]["rate"].value for v in versions]
    errors = [[v - figures[k]["rate"].wilson()[0] for k, v in zip(versions, values, strict=True)],
              [figures[k]["rate"].wilson()[1] - v for k, v in zip(versions, values, strict=True)]]  # fmt: skip
    rates.bar([f"v{v}" for v in versions], values, yerr=errors, capsize=6)
    rates.set_ylabel("completion of the recommended driver (95% CI)")
    rates.set_ylim(0, 1)
    for version in versions:
        c = figures[version]["calibration"]
        calibration.plot(c["predicted"], c["observed"], marker="o", label=f"v{version}")
    calibration.plot([0, 1], [0, 1], linestyle=":", color="grey")
    calibration.set_xlabel("mean predicted score")
    calibration.set_ylabel("observed completion")
    calibration.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(settings: Settings, out: Path = OUT) -> str:
    """Reads the log of the settings' Feast project, writes the report and chart; returns the text."""
    store = open_store(settings)
    client = redis_client(store.config.online_store, 5.0)
    predictions, feedback = read_log(client, store.project)
    try:
        champion = version_for_alias(connect(settings), settings.model_name, settings.model_alias)
    except MlflowException:  # no registry at hand: the lowest version is the baseline
        champion = None
    text, figures = report(joined(predictions, feedback), str(champion.version) if champion else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    if figures:
        chart(figures, out / "report.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    print(run(get_settings()))
    print(f"wrote {OUT / 'report.md'} and {OUT / 'report.png'}")


if __name__ == "__main__":
    main()
