"""Scoring and ranking: probabilities from the model, best driver first."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from driver_ranker.features.online import FeatureRows

logger = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray], np.ndarray]
"""Feature matrix (model input order) -> probability that each driver completes the trip."""


def _fold_linear_pipeline(estimator: Any) -> Scorer | None:
    """numpy arithmetic equal to a [log1p] -> [StandardScaler] -> binary LogisticRegression pipeline."""
    steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
    *transforms, final = steps
    if not isinstance(final, LogisticRegression) or final.coef_.shape[0] != 1:
        return None
    log1p, mean, scale = False, 0.0, 1.0
    allowed = ["log1p", "scale"]  # each at most once, in this order (as training builds them)
    for step in transforms:
        if isinstance(step, FunctionTransformer) and step.func is np.log1p and not step.kw_args:
            kind = "log1p"
        elif isinstance(step, StandardScaler):
            kind = "scale"
        else:
            return None
        if kind not in allowed:
            return None
        allowed = allowed[allowed.index(kind) + 1 :]
        if kind == "log1p":
            log1p = True
        else:
            mean = step.mean_ if step.mean_ is not None else 0.0
            scale = step.scale_ if step.scale_ is not None else 1.0
    coef, intercept = final.coef_[0].copy(), float(final.intercept_[0])

    def score(matrix: np.ndarray) -> np.ndarray:
        x = np.log1p(matrix) if log1p else matrix
        return expit(((x - mean) / scale) @ coef + intercept)

    return score


def compile_scorer(estimator: Any, n_features: int) -> tuple[Scorer, str]:
    """The fastest scorer equal to `estimator.predict_proba(X)[:, 1]`, and its name.

    scikit-learn validates the input of every pipeline step on every call (~0.4 ms here, more than
    the rest of a request), while the model itself is a few multiply-adds. The pipeline shape that
    training builds is folded into numpy; the folded scorer is used only if it matches
    predict_proba on probe rows at load time. Any other estimator is called as it is.
    """

    def native(matrix: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(matrix)[:, 1]

    folded = _fold_linear_pipeline(estimator)
    if folded is None:
        return native, "predict_proba"
    rng = np.random.default_rng(0)
    probe = np.vstack([rng.uniform(0, 1, (64, n_features)), rng.uniform(0, 1000, (64, n_features))])
    if np.allclose(folded(probe), native(probe), rtol=0, atol=1e-12):
        return folded, "folded-linear"
    logger.warning("folded scorer differs from predict_proba; using predict_proba")
    return native, "predict_proba"


def rank(score: Scorer, rows: FeatureRows) -> list[tuple[int, float]]:
    """(driver id, probability of completing the trip) for each known driver, best first.

    Ties keep request order, so the same request always gets the same answer.
    """
    if not rows.driver_ids:
        return []
    scores = score(rows.matrix)
    order = np.argsort(-scores, kind="stable")
    ids = np.asarray(rows.driver_ids, dtype=object)[order].tolist()
    return list(zip(ids, scores[order].tolist(), strict=True))
