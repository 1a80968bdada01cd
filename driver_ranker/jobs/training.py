"""Training: point-in-time rows from Feast, a scikit-learn classifier, an MLflow version.

`python -m driver_ranker.jobs.training` (`make train`) trains, registers a version of `driver-ranker`,
and moves the `champion` alias to it only when it passes the quality gate and is no worse than
the current champion on the same holdout.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass, field

import mlflow
import numpy as np
import pandas as pd
from feast import FeatureStore
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from driver_ranker.config import PROJECT_ROOT, Settings, get_settings
from driver_ranker.errors import DependencyUnavailable
from driver_ranker.features.store import FEATURE_SERVICE, historical_features, open_store, require_data
from driver_ranker.jobs.data import ORDERS_FILE
from driver_ranker.model.drift import METADATA_KEY, DriftReference
from driver_ranker.model.registry import FEATURE_SERVICE_TAG, connect, load_version, version_for_alias
from driver_ranker.model.scoring import scorer_metadata

logger = logging.getLogger(__name__)

EXPERIMENT = "driver-ranker"
LABEL = "trip_completed"


@dataclass(frozen=True)
class TrainOptions:
    model: str = "logreg"
    """`logreg` (scaled logistic regression, the default) or `hgb` (histogram gradient boosting)."""
    c: float = 1.0
    """Inverse regularisation strength of the logistic regression."""
    holdout_fraction: float = 0.2
    """Share of the latest orders held out for evaluation."""
    min_auc: float = 0.75
    """Quality gate: the least holdout ROC AUC a version needs to become champion."""
    features: tuple[str, ...] | None = None
    """Subset of the feature service to train on; all of it by default."""
    seed: int = 42


@dataclass
class TrainingReport:
    version: str
    metrics: dict[str, float]
    champion: bool
    reason: str
    previous_champion: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        verdict = "is the new champion" if self.champion else "is NOT champion"
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in self.metrics.items())
        return f"driver-ranker version {self.version}: {metrics}; {verdict} ({self.reason})"


def training_frame(store: FeatureStore, orders: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Orders joined point-in-time to the feature service; returns the rows and feature names."""
    service = store.get_feature_service(FEATURE_SERVICE)
    features = [f.name for projection in service.feature_view_projections for f in projection.features]
    rows = historical_features(store, orders, service)
    return rows.sort_values("event_timestamp", ignore_index=True), features


def time_split(rows: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trains on the earlier orders and holds out the latest ones (rows sorted by time)."""
    cut = int(len(rows) * (1 - holdout_fraction))
    return rows.iloc[:cut], rows.iloc[cut:]


def build_model(options: TrainOptions) -> Pipeline:
    if options.model == "logreg":
        # log1p tames the long tail of trip counts; scaling makes the coefficients comparable.
        return make_pipeline(
            FunctionTransformer(np.log1p, feature_names_out="one-to-one"),
            StandardScaler(),
            LogisticRegression(C=options.c, random_state=options.seed),
        )
    if options.model == "hgb":
        return make_pipeline(HistGradientBoostingClassifier(random_state=options.seed))
    raise ValueError(f"unknown model {options.model!r}: use logreg or hgb")


def evaluate(estimator: Pipeline, holdout: pd.DataFrame, features: list[str]) -> dict[str, float]:
    proba = estimator.predict_proba(holdout[features].to_numpy())[:, 1]
    return {
        "holdout_auc": float(roc_auc_score(holdout[LABEL], proba)),
        "holdout_log_loss": float(log_loss(holdout[LABEL], proba)),
    }


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True
        )
    except OSError:  # no git at all: the image (compose's init job trains there)
        return "unknown"
    return result.stdout.strip() or "unknown"


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    # With a local database the runs' files go under artifacts/; a server stores its own.
    local = not settings.mlflow_tracking_uri.startswith(("http://", "https://"))
    location = settings.mlflow_artifact_root.as_uri() if local else None
    return client.create_experiment(EXPERIMENT, artifact_location=location)


def champion_decision(
    client: MlflowClient, settings: Settings, metrics: dict[str, float], holdout: pd.DataFrame, min_auc: float
) -> tuple[bool, str, str | None]:
    """Whether the new version should take the alias, why, and the current champion's version."""
    if metrics["holdout_auc"] < min_auc:
        return False, f"holdout AUC {metrics['holdout_auc']:.4f} is below the gate {min_auc}", None
    current = version_for_alias(client, settings.model_name, settings.model_alias)
    if current is None:
        return True, "first version to pass the gate", None
    champion = load_version(client, current, settings.model_alias)
    missing = set(champion.feature_names) - set(holdout.columns)
    if missing:
        return (
            True,
            f"champion v{current.version} needs features no longer served: {sorted(missing)}",
            current.version,
        )
    champion_auc = evaluate(champion.estimator, holdout, list(champion.feature_names))["holdout_auc"]
    if metrics["holdout_auc"] < champion_auc:
        return (
            False,
            f"holdout AUC {metrics['holdout_auc']:.4f} is worse than champion v{current.version}'s {champion_auc:.4f}",
            current.version,
        )
    return (
        True,
        f"holdout AUC {metrics['holdout_auc']:.4f} >= champion v{current.version}'s {champion_auc:.4f}",
        current.version,
    )


def train(settings: Settings, options: TrainOptions = TrainOptions()) -> TrainingReport:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    require_data(settings)
    store = open_store(settings)
    orders = pd.read_parquet(settings.feast_repo_path / "data" / ORDERS_FILE)
    rows, service_features = training_frame(store, orders)
    features = list(options.features or service_features)
    unknown = set(features) - set(service_features)
    if unknown:
        raise ValueError(f"features {sorted(unknown)} are not in the feature service {FEATURE_SERVICE}")
    rows = rows.dropna(subset=features)
    train_rows, holdout = time_split(rows, options.holdout_fraction)
    for name, part in (("training", train_rows), ("holdout", holdout)):
        if part[LABEL].nunique() < 2:
            raise ValueError(f"the {name} orders hold a single class of {LABEL}: nothing to learn or rank")
    timings["join_s"] = time.perf_counter() - started

    client = connect(settings)
    experiment_id = _experiment_id(client, settings)
    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id):
        # Fitted on arrays: serving passes arrays in signature order, with no per-call name checks.
        estimator = build_model(options).fit(train_rows[features].to_numpy(), train_rows[LABEL].to_numpy())
        metrics = evaluate(estimator, holdout, features)
        window = f"{rows.event_timestamp.min().isoformat()}/{rows.event_timestamp.max().isoformat()}"
        tags = {FEATURE_SERVICE_TAG: FEATURE_SERVICE, "data_window": window, "git_commit": _git_commit()}
        mlflow.set_tags(tags)
        mlflow.log_params(
            {k: v for k, v in asdict(options).items() if k != "features"} | {"features": ",".join(features)}
        )
        mlflow.log_metrics(metrics | {"train_rows": len(train_rows), "holdout_rows": len(holdout)})
        example = train_rows[features].head(5)
        # Serving compares the features it scores with these bins (model/drift.py).
        reference = DriftReference.from_training(train_rows[features].to_numpy(), features)
        # Workers score with the folded numbers and never load scikit-learn (model/scoring.py).
        metadata = {METADATA_KEY: reference.to_metadata()} | scorer_metadata(estimator, len(features))
        with warnings.catch_warnings():
            # MLflow checks the named example by scoring it as a DataFrame, which scikit-learn
            # warns about for a model fitted on arrays; the signature carries the names.
            warnings.filterwarnings("ignore", message="X has feature names", category=UserWarning)
            model_info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=infer_signature(example, estimator.predict_proba(example.to_numpy())),
                input_example=example,
                metadata=metadata,
            )
    timings["fit_log_s"] = time.perf_counter() - started

    started = time.perf_counter()
    decision, reason, previous = champion_decision(client, settings, metrics, holdout, options.min_auc)
    version = mlflow.register_model(model_info.model_uri, settings.model_name, tags=tags)
    for key, value in metrics.items():
        client.set_model_version_tag(settings.model_name, version.version, key, f"{value:.6f}")
    if decision:
        client.set_registered_model_alias(settings.model_name, settings.model_alias, version.version)
    timings["register_s"] = time.perf_counter() - started
    return TrainingReport(str(version.version), metrics, decision, reason, previous, timings)


def main(argv: list[str] | None = None) -> None:
    defaults = TrainOptions()
    parser = argparse.ArgumentParser(
        description="Train, register, and maybe promote a driver-ranker version."
    )
    parser.add_argument("--model", choices=["logreg", "hgb"], default=defaults.model)
    parser.add_argument("--c", type=float, default=defaults.c)
    parser.add_argument("--holdout-fraction", type=float, default=defaults.holdout_fraction)
    parser.add_argument("--min-auc", type=float, default=defaults.min_auc)
    parser.add_argument("--features", nargs="+", help="train on a subset of the feature service")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--if-no-champion", action="store_true", help="do nothing when the alias already names a version"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    if args.if_no_champion:
        current = version_for_alias(connect(settings), settings.model_name, settings.model_alias)
        if current is not None:
            print(
                f"train: {settings.model_name}@{settings.model_alias} is version {current.version}; skipping"
            )
            return
    options = TrainOptions(
        args.model, args.c, args.holdout_fraction, args.min_auc, tuple(args.features or ()) or None, args.seed
    )
    try:
        report = train(settings, options)
    except (FileNotFoundError, ValueError, DependencyUnavailable) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(report)


if __name__ == "__main__":
    main()
