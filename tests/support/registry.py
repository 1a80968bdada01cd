"""Registering hand-made versions in a real MLflow registry, the ways MLflow users do."""

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from driver_ranker.config import Settings
from driver_ranker.features.store import FEATURE_SERVICE
from driver_ranker.model.registry import FEATURE_SERVICE_TAG, connect
from driver_ranker.model.scoring import scorer_metadata

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
SERVICE_TAGS = {FEATURE_SERVICE_TAG: FEATURE_SERVICE}


def _rows(features: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.uniform(0, 1, (50, len(features))), columns=features)


def log_run(
    estimator,
    features: list[str] = FEATURES,
    pickled: bool = False,
    signed: bool = True,
    as_trained: bool = False,
) -> str:
    """Fits `estimator` on random rows and logs it in a run with no tags; returns the model URI.
    `as_trained`: with the linear scorer in its metadata, as `make train` writes it."""
    frame = _rows(features)
    estimator.fit(frame.to_numpy(), np.random.default_rng(1).integers(0, 2, 50))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(frame, np.zeros((50, 2))) if signed else None,
            serialization_format="cloudpickle" if pickled else "skops",
            metadata=scorer_metadata(estimator, len(features)) if as_trained else None,
        )
    return info.model_uri


def register(
    settings: Settings,
    estimator,
    features: list[str] = FEATURES,
    pickled: bool = False,
    tags: dict[str, str] | None = SERVICE_TAGS,
    signed: bool = True,
    as_trained: bool = False,
) -> str:
    """Logs and registers `estimator` (fitted here on random rows) with a signature over
    `features`; returns the new version, with no alias."""
    connect(settings)
    uri = log_run(estimator, features, pickled, signed, as_trained)
    return str(mlflow.register_model(uri, settings.model_name, tags=tags).version)


def register_run_model(settings: Settings, run_id: str) -> str:
    """`mlflow.register_model("runs:/<run>/model")`: the version carries no tags of its own."""
    connect(settings)
    return str(mlflow.register_model(f"runs:/{run_id}/model", settings.model_name).version)


def register_logistic(settings: Settings, features: list[str] = FEATURES, **kwargs) -> str:
    return register(settings, LogisticRegression(), features, **kwargs)


def create_version_from_run(settings: Settings, features: list[str] = FEATURES) -> str:
    """`MlflowClient.create_model_version` from an untagged run: what MLflow's UI "Register model" does."""
    client = connect(settings)
    model = mlflow.models.get_model_info(log_run(LogisticRegression(), features))
    source = mlflow.get_logged_model(model.model_id).artifact_location
    return str(client.create_model_version(settings.model_name, source, run_id=model.run_id).version)


class ConstantModel(mlflow.pyfunc.PythonModel):
    """A pyfunc model with no scikit-learn flavour."""

    def predict(self, context, model_input):
        return np.full(len(model_input), 0.5)


def register_pyfunc(settings: Settings) -> str:
    connect(settings)
    frame = _rows(FEATURES)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ConstantModel(), signature=infer_signature(frame, np.zeros(50))
        )
    return str(mlflow.register_model(info.model_uri, settings.model_name, tags=SERVICE_TAGS).version)


def artifact_location(client: MlflowClient, name: str, version: str) -> str:
    return client.get_model_version_download_uri(name, version)
