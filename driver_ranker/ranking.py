"""Scoring and ranking: probabilities from the model, best driver first."""

from __future__ import annotations

import numpy as np

from driver_ranker.online_features import FeatureRows
from driver_ranker.registry import LoadedModel


def rank(model: LoadedModel, rows: FeatureRows) -> list[tuple[int, float]]:
    """(driver id, probability of completing the trip) for each known driver, best first.

    Ties keep request order, so the same request always gets the same answer.
    """
    if not rows.driver_ids:
        return []
    scores = model.estimator.predict_proba(rows.matrix)[:, 1]
    order = np.argsort(-scores, kind="stable")
    return [(rows.driver_ids[i], float(scores[i])) for i in order]
