"""Registering hand-made versions in a real MLflow registry, for lifecycle tests."""

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from driver_ranker.config import Settings
from driver_ranker.feature_store import FEATURE_SERVICE
from driver_ranker.registry import FEATURE_SERVICE_TAG, connect

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]


def register(settings: Settings, estimator, features: list[str] = FEATURES, pickled: bool = False) -> str:
    """Logs and registers `estimator` (fitted here on random rows) with a signature over
    `features`; returns the new version, with no alias."""
    connect(settings)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.uniform(0, 1, (50, len(features))), columns=features)
    estimator.fit(frame.to_numpy(), rng.integers(0, 2, 50))
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(frame, np.zeros((50, 2))),
            serialization_format="cloudpickle" if pickled else "skops",
        )
    version = mlflow.register_model(
        info.model_uri, settings.model_name, tags={FEATURE_SERVICE_TAG: FEATURE_SERVICE}
    )
    return str(version.version)


def register_logistic(settings: Settings, features: list[str] = FEATURES) -> str:
    return register(settings, LogisticRegression(), features)
