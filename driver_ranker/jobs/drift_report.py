"""`make drift-report`: do the features the champion would score now look like its training data?

Reads the online features of a sample of drivers the way the ranker does (its reader, its ttl rule:
stale and unknown drivers are left out, and counted), and compares each feature with the deciles
stored with the model version at training (model/drift.py), as the workers' driver_ranker_feature_psi
does over the rows they scored. The sample is every driver of the statistics data by default, or the
`driver_id` column of --drivers FILE (a window of requests, say: a CSV or Parquet file such as
`make batch`'s input). Writes artifacts/drift/report.md (PSI and verdict per feature, then each
bin's shares) and artifacts/drift/report.png (reference and served shares per bin).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.errors import FeatureStoreUnavailable, MissingFeatures, ModelUnavailable
from driver_ranker.features.online import FeatureRows, open_reader
from driver_ranker.features.store import open_store
from driver_ranker.jobs.data import STATS_FILE
from driver_ranker.model.drift import DriftReference, FeatureReference, psi, verdict
from driver_ranker.model.registry import LoadedModel, load_alias, load_numbered, resolve_feature_service

OUT = PROJECT_ROOT / "artifacts" / "drift"
READ_CHUNK = 1000


def sample_drivers(settings: Settings, drivers_file: Path | None) -> list[int]:
    """The driver ids to compare: --drivers FILE's, else every driver of the statistics data."""
    path = drivers_file or settings.feast_repo_path / "data" / STATS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: pass --drivers FILE (a CSV or Parquet with driver_id)"
        )
    csv = ".csv" in path.suffixes  # .csv.gz too, as make batch reads them
    try:
        frame = (
            pd.read_csv(path, usecols=["driver_id"]) if csv else pd.read_parquet(path, columns=["driver_id"])
        )
    except (ValueError, KeyError, OSError) as exc:  # no driver_id column, or not CSV/Parquet
        raise ValueError(f"{path}: cannot read a driver_id column ({exc})") from None
    ids = pd.unique(frame["driver_id"].dropna().astype("int64")).tolist()
    if not ids:
        raise ValueError(f"{path} holds no driver id")
    return ids


def read_served(settings: Settings, model: LoadedModel, driver_ids: list[int]) -> FeatureRows:
    """The rows the ranker would score for these drivers now, through its own reader."""
    store = open_store(settings, offline=False)
    model = resolve_feature_service(model, store, settings.default_feature_service)
    reader = open_reader(
        store, model.feature_service, model.feature_names, max(settings.feature_read_timeout_s, 5)
    )

    async def read_all() -> list[FeatureRows]:
        return [
            await reader.read(driver_ids[i : i + READ_CHUNK]) for i in range(0, len(driver_ids), READ_CHUNK)
        ]

    parts = asyncio.run(read_all())
    return FeatureRows(
        driver_ids=[d for p in parts for d in p.driver_ids],
        matrix=np.vstack([p.matrix for p in parts]),
        unknown_ids=[d for p in parts for d in p.unknown_ids],
        stale_ids=[d for p in parts for d in p.stale_ids],
    )


def bin_labels(feature: FeatureReference) -> list[str]:
    """A label per bin of the feature, as its report table shows them."""
    edges = feature.edges
    labels = [f"< {edges[0]:.4g}"] if len(edges) else ["all values"]
    for low, high in itertools.pairwise(edges):
        labels.append(f"= {low:.4g}" if high == np.nextafter(low, np.inf) else f"[{low:.4g}, {high:.4g})")
    if len(edges):
        labels.append(f">= {edges[-1]:.4g}")
    return [*labels, "missing (NaN)"]


def report(
    model: LoadedModel, rows: FeatureRows
) -> tuple[str, dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """The Markdown report, and per feature (reference shares, served shares, PSI) for the chart."""
    reference: DriftReference = model.drift_reference
    figures = {}
    for column, name in enumerate(model.feature_names):
        if name in reference.features:
            feature = reference.features[name]
            served = feature.shares_of(rows.matrix[:, column])
            figures[name] = (feature.shares, served, psi(feature.shares, served))
    lines = [
        f"# Feature drift of {model.name} v{model.version} (@{model.alias})",
        "",
        f"{len(rows.driver_ids)} drivers compared; {len(rows.unknown_ids)} unknown and {len(rows.stale_ids)} "
        "stale left out, as the ranker leaves them out. PSI < 0.1: stable; 0.1 to 0.25: moved; > 0.25: shifted.",
        "",
        "| feature | PSI | verdict |",
        "| --- | ---: | --- |",
        *(f"| {name} | {value:.4f} | {verdict(value)} |" for name, (_, _, value) in figures.items()),
    ]
    for name, (expected, served, _) in figures.items():
        lines += ["", f"## {name}", "", "| bin | training | served |", "| --- | ---: | ---: |"]
        labels = bin_labels(reference.features[name])
        lines += [f"| {b} | {e:.3f} | {s:.3f} |" for b, e, s in zip(labels, expected, served, strict=True)]
    return "\n".join(lines), figures


def chart(model: LoadedModel, figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(4.2 * len(figures), 3.6), squeeze=False)
    for axis, (name, (expected, served, value)) in zip(axes[0], figures.items(), strict=True):
        positions = np.arange(len(expected))
        axis.bar(positions - 0.2, expected, width=0.4, label="training")
        axis.bar(positions + 0.2, served, width=0.4, label="served now")
        axis.set_title(f"{name}: PSI {value:.3f} ({verdict(value)})")
        axis.set_xlabel("training decile bin")
        axis.set_xticks(positions)
    axes[0][0].set_ylabel("share of rows")
    axes[0][0].legend()
    fig.suptitle(f"{model.name} v{model.version}: served features against the training reference")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(
    settings: Settings, version: str | None = None, drivers_file: Path | None = None, out: Path = OUT
) -> str:
    """Writes the report and chart for the champion (or `version`); returns the report's text."""
    model = load_numbered(settings, version) if version else load_alias(settings)
    if model.drift_reference is None:
        raise ValueError(
            f"{model.uri} carries no training reference (trained before drift was recorded, or by "
            "another tool): retrain it with `make train`"
        )
    rows = read_served(settings, model, sample_drivers(settings, drivers_file))
    if not rows.driver_ids:
        raise ValueError("no driver of the sample has fresh features online: run `make features`")
    text, figures = report(model, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n")
    chart(model, figures, out / "report.png")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", help="a version number instead of the champion")
    parser.add_argument("--drivers", type=Path, help="CSV or Parquet whose driver_id column is the sample")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        text = run(get_settings(), args.version, args.drivers, args.out)
    except (FileNotFoundError, ValueError, MissingFeatures, ModelUnavailable, FeatureStoreUnavailable) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(text)
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.png'}")


if __name__ == "__main__":
    main()
