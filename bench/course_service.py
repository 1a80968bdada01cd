"""The course design (the BentoML 1.0 + Feast + MLflow course service this project replaces), the
benchmark's reference: per request Feast's SDK with `.to_dict()`, a pandas DataFrame, the
scikit-learn model called on the DataFrame, argmax.

Same model, same Redis, same request type as driver-ranker; only the request path differs.
"""

from __future__ import annotations

import bentoml
import pandas as pd

from driver_ranker.config import get_settings
from driver_ranker.features.store import open_store
from driver_ranker.model.registry import load_alias
from driver_ranker.serving.schemas import InferenceRequest

settings = get_settings()


@bentoml.service(name="course-ranker", workers=settings.workers, traffic={"timeout": 10})
class CourseRanker:
    def __init__(self) -> None:
        loaded = load_alias(settings)
        self.model = loaded.estimator
        self.version = loaded.version
        self.feature_list = list(loaded.feature_names)
        self.fs = open_store(settings)

    @bentoml.api(route="/inference")
    def inference(self, request: InferenceRequest, /) -> dict:
        online_features = self.fs.get_online_features(
            entity_rows=[{"driver_id": driver_id} for driver_id in request.driver_ids],
            features=[f"driver_stats:{name}" for name in self.feature_list],
        )
        df = pd.DataFrame.from_dict(online_features.to_dict())
        input_features = df.drop(["driver_id"], axis=1)[self.feature_list]
        df["prediction"] = self.model.predict_proba(input_features)[:, 1]
        best_idx = df["prediction"].argmax()
        return {
            "request_id": request.request_id,
            "best_driver_id": int(df["driver_id"].iloc[best_idx]),
            "scores": [
                {"driver_id": int(d), "score": float(s)}
                for d, s in zip(df["driver_id"], df["prediction"], strict=True)
            ],
            "unknown_driver_ids": [],
            "model": {"name": settings.model_name, "version": self.version, "alias": settings.model_alias},
        }
