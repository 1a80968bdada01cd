"""The MLflow model registry: where the champion is named, and how a version is loaded."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from driver_ranker.config import Settings
from driver_ranker.errors import MissingFeatures, ModelUnavailable
from driver_ranker.model.drift import DriftReference
from driver_ranker.model.scoring import FOLDED, LinearScorer, Scorer, compile_scorer

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

FEATURE_SERVICE_TAG = "feast.feature_service"
"""Model version tag naming the Feast feature service the version was trained on."""


@dataclass(frozen=True)
class LoadedModel:
    """A registered version loaded for scoring, with what serving needs to feed it."""

    name: str
    version: str
    alias: str
    run_id: str
    feature_names: tuple[str, ...]
    """Input order of the model, from its signature."""
    feature_service: str | None
    """Feast feature service the model reads; None until `resolve_feature_service` settles it."""
    location: str = field(repr=False)
    """Where the version's files are: `models:/<name>/<version>`, or the Bento store's directory."""
    linear_scorer: LinearScorer | None = field(default=None, repr=False)
    """The arithmetic training wrote into the version's metadata (model/scoring.py); None for a
    version trained without it, which is scored through its estimator."""
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    source: str = "registry"
    """`registry`, or `bento-store` when started from the model the Bento carries."""
    drift_reference: DriftReference | None = field(default=None, repr=False)
    """Training distribution of each feature (model/drift.py); None for a version trained without."""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @cached_property
    def estimator(self) -> Any:
        """The native scikit-learn estimator (`predict_proba`), loaded when first asked for: with
        a linear scorer, serving never asks, and a worker imports neither scikit-learn nor skops."""
        return mlflow.sklearn.load_model(self.location)

    def scorer(self) -> tuple[Scorer, str]:
        """The version's scorer and its kind: its linear scorer, else one compiled from its estimator."""
        if self.linear_scorer is not None:
            return self.linear_scorer.scorer(), FOLDED
        return compile_scorer(self.estimator, len(self.feature_names))


def connect(settings: Settings) -> MlflowClient:
    """A client for the configured tracking server and registry (also the default for `mlflow.*`)."""
    # MLflow reads its HTTP bounds from the environment; by default it retries for minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(settings.registry_timeout_s))))
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)


def load_from_bento_store(tag: str, alias: str) -> LoadedModel:
    """The model a Bento carries (packaging.py imported it from the registry at build time)."""
    import bentoml

    stored = bentoml.models.get(tag)
    path = stored.path_of("mlflow_model")
    mlmodel = mlflow.models.Model.load(path)
    signature = mlmodel.signature
    feature_names = tuple(signature.inputs.input_names())
    return LoadedModel(
        name=stored.tag.name,
        version=stored.info.labels.get("mlflow_version", str(stored.tag.version)),
        alias=alias,
        run_id=stored.info.metadata.get("run_id", ""),
        feature_names=feature_names,
        feature_service=stored.info.metadata.get(FEATURE_SERVICE_TAG) or None,
        location=path,
        linear_scorer=LinearScorer.from_metadata(mlmodel.metadata, len(feature_names)),
        source="bento-store",
        drift_reference=DriftReference.from_metadata(mlmodel.metadata),
    )


def version_for_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the model or alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_version(client: MlflowClient, version: ModelVersion, alias: str) -> LoadedModel:
    """Reads a version's MLmodel file: its feature order and service, its linear scorer and drift
    reference (its estimator is loaded when first asked for).

    The feature service comes from the version's tag, else its run's tag (a version registered from
    MLflow's UI or by `mlflow.register_model` carries only the run's); it is None when neither
    names one, for `resolve_feature_service` to settle. Raises ModelUnavailable (no signature),
    MlflowException (an artifact that cannot be fetched) or the registry's own errors; a version
    without a linear scorer and without a scikit-learn flavour fails when its estimator is loaded.
    """
    uri = f"models:/{version.name}/{version.version}"
    info = mlflow.models.get_model_info(uri)
    signature = info.signature
    if signature is None or signature.inputs is None:
        raise ModelUnavailable(f"{uri} has no signature: the feature order is unknown")
    feature_service = version.tags.get(FEATURE_SERVICE_TAG)
    if not feature_service and version.run_id:
        feature_service = client.get_run(version.run_id).data.tags.get(FEATURE_SERVICE_TAG)
    feature_names = tuple(signature.inputs.input_names())
    return LoadedModel(
        name=version.name,
        version=str(version.version),
        alias=alias,
        run_id=version.run_id or "",
        feature_names=feature_names,
        feature_service=feature_service or None,
        location=uri,
        linear_scorer=LinearScorer.from_metadata(info.metadata, len(feature_names)),
        drift_reference=DriftReference.from_metadata(info.metadata),
    )


def resolve_feature_service(model: LoadedModel, store: FeatureStore, default: str | None) -> LoadedModel:
    """The model with its feature service settled: its own (tag), else the one service in the
    Feast registry whose features are exactly the signature's inputs, else `default`.

    Raises MissingFeatures when none of these names one.
    """
    if model.feature_service:
        return model
    wanted = set(model.feature_names)
    matching = [
        service.name
        for service in store.list_feature_services()
        if {f.name for p in service.feature_view_projections for f in p.features} == wanted
    ]
    if len(matching) == 1:
        name, how = matching[0], "its features match"
    elif default:
        name, how = default, "DEFAULT_FEATURE_SERVICE"
    else:
        found = (
            f"{len(matching)} feature services match its inputs"
            if matching
            else "no feature service matches its inputs"
        )
        raise MissingFeatures(
            f"{model.uri} names no feature service (no {FEATURE_SERVICE_TAG!r} tag on the version or its "
            f"run) and {found} {sorted(wanted)}: tag the version, or set DEFAULT_FEATURE_SERVICE"
        )
    logger.info("%s has no %r tag: serving it with %s (%s)", model.uri, FEATURE_SERVICE_TAG, name, how)
    return replace(model, feature_service=name)


def load_numbered(settings: Settings, number: str) -> LoadedModel:
    """Loads version `number` of the configured model, whatever its aliases."""
    client = connect(settings)
    try:
        version = client.get_model_version(settings.model_name, number)
    except MlflowException as exc:
        raise ModelUnavailable(
            f"{settings.model_name!r} has no version {number} in {settings.mlflow_tracking_uri}"
        ) from exc
    return load_version(client, version, alias=f"version {number}")


def load_alias(settings: Settings, alias: str | None = None) -> LoadedModel:
    """Resolves `models:/<name>@<alias>` (the champion by default) and loads it."""
    alias = alias or settings.model_alias
    client = connect(settings)
    try:
        version = version_for_alias(client, settings.model_name, alias)
    except MlflowException as exc:
        raise ModelUnavailable(f"the MLflow registry at {settings.mlflow_tracking_uri} fails: {exc}") from exc
    if version is None:
        raise ModelUnavailable(
            f"no version of {settings.model_name!r} has the alias {alias!r} in "
            f"{settings.mlflow_tracking_uri}: run `make train`"
        )
    return load_version(client, version, alias)
