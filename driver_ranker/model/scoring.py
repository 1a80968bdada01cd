"""Scoring and ranking: probabilities from the model, best driver first."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from driver_ranker.features.online import FeatureRows

logger = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray], np.ndarray]
"""Feature matrix (model input order) -> probability that each driver completes the trip."""

METADATA_KEY = "linear_scorer"
"""Key of a version's LinearScorer in its MLmodel file's metadata (written by training)."""
FOLDED = "folded-linear"
"""The scorer kind of a LinearScorer (GET /model's `scorer`)."""


@dataclass(frozen=True)
class LinearScorer:
    """The arithmetic of a [log1p] -> [StandardScaler] -> binary LogisticRegression pipeline, as
    numbers: `expit(((log1p?(x) - mean) / scale) @ coef + intercept)`.

    scikit-learn validates the input of every pipeline step on every call (~0.4 ms here, more than
    the rest of a request), while the model itself is a few multiply-adds. Training writes these
    numbers into the version's MLmodel metadata once they score its probe rows as predict_proba
    does, so a worker serves the version without loading scikit-learn or skops (1.6 s and ~90 MB
    of a worker's start; README, Performance).
    """

    log1p: bool
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def fold(cls, estimator: Any) -> LinearScorer | None:
        """The numbers of the pipeline shape training builds; None for any other estimator."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        steps = [step for _, step in estimator.steps] if isinstance(estimator, Pipeline) else [estimator]
        *transforms, final = steps
        if not isinstance(final, LogisticRegression) or final.coef_.shape[0] != 1:
            return None
        n = final.coef_.shape[1]
        log1p, mean, scale = False, np.zeros(n), np.ones(n)
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
                mean = step.mean_ if step.mean_ is not None else mean
                scale = step.scale_ if step.scale_ is not None else scale
        return cls(
            log1p,
            tuple(map(float, mean)),
            tuple(map(float, scale)),
            tuple(map(float, final.coef_[0])),
            float(final.intercept_[0]),
        )

    def scorer(self) -> Scorer:
        log1p, intercept = self.log1p, self.intercept
        mean, scale, coef = np.array(self.mean), np.array(self.scale), np.array(self.coef)

        def score(matrix: np.ndarray) -> np.ndarray:
            x = np.log1p(matrix) if log1p else matrix
            # The logistic function (scikit-learn calls SciPy's expit) without importing SciPy:
            # within 2.3e-16 of it, and no overflow for any input.
            return np.exp(-np.logaddexp(0.0, -(((x - mean) / scale) @ coef + intercept)))

        return score

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, n_features: int) -> LinearScorer | None:
        """The scorer a version's metadata carries for `n_features` inputs; None when it carries
        none (a version from another tool or from before) or one that does not fit."""
        raw = (metadata or {}).get(METADATA_KEY)
        try:
            scorer = cls(
                bool(raw["log1p"]),
                tuple(map(float, raw["mean"])),
                tuple(map(float, raw["scale"])),
                tuple(map(float, raw["coef"])),
                float(raw["intercept"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        sizes = {len(scorer.mean), len(scorer.scale), len(scorer.coef)}
        return scorer if sizes == {n_features} else None


def verified_fold(estimator: Any, n_features: int) -> LinearScorer | None:
    """The estimator's LinearScorer if it scores probe rows as `predict_proba(X)[:, 1]` does."""
    folded = LinearScorer.fold(estimator)
    if folded is None:
        return None
    rng = np.random.default_rng(0)
    probe = np.vstack([rng.uniform(0, 1, (64, n_features)), rng.uniform(0, 1000, (64, n_features))])
    if np.allclose(folded.scorer()(probe), estimator.predict_proba(probe)[:, 1], rtol=0, atol=1e-12):
        return folded
    logger.warning("folded scorer differs from predict_proba; using predict_proba")
    return None


def scorer_metadata(estimator: Any, n_features: int) -> dict[str, Any]:
    """What training writes into a version's metadata for serving to score it without its
    estimator: its verified LinearScorer, or nothing."""
    folded = verified_fold(estimator, n_features)
    return {METADATA_KEY: folded.to_metadata()} if folded is not None else {}


def compile_scorer(estimator: Any, n_features: int) -> tuple[Scorer, str]:
    """The fastest scorer equal to `estimator.predict_proba(X)[:, 1]`, and its kind: the folded
    arithmetic if it matches predict_proba on probe rows, else predict_proba itself."""
    folded = verified_fold(estimator, n_features)
    if folded is not None:
        return folded.scorer(), FOLDED

    def native(matrix: np.ndarray) -> np.ndarray:
        return estimator.predict_proba(matrix)[:, 1]

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
