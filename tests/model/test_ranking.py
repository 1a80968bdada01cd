"""Ranking behaviour of the trained champion, and the scorer serving compiles from it."""

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, StandardScaler

from driver_ranker.features.online import FeatureRows
from driver_ranker.jobs.data import STATS_FILE
from driver_ranker.model.registry import load_alias
from driver_ranker.model.scoring import FOLDED, METADATA_KEY, LinearScorer, compile_scorer, rank


@pytest.fixture(scope="module")
def champion_scorer(feast_settings, champion):
    model = load_alias(feast_settings)
    score, kind = compile_scorer(model.estimator, len(model.feature_names))
    return model, score, kind


def _rows(ids, matrix):
    return FeatureRows(list(ids), np.array(matrix, dtype=np.float64), [])


def test_better_statistics_rank_higher(champion_scorer):
    _, score, _ = champion_scorer
    ranking = rank(score, _rows([1, 2, 3], [[0.2, 0.3, 20], [0.9, 0.9, 150], [0.5, 0.6, 60]]))
    assert [driver for driver, _ in ranking] == [2, 3, 1]
    assert all(0 < s < 1 for _, s in ranking)


def test_each_statistic_raises_the_score(champion_scorer):
    _, score, _ = champion_scorer
    base = [0.5, 0.5, 50]
    for column, better in enumerate([0.9, 0.9, 200]):
        improved = list(base)
        improved[column] = better
        (first, _), _ = rank(score, _rows([0, 1], [base, improved]))
        assert first == 1, f"raising feature {column} should raise the score"


def test_ties_keep_request_order_and_empty_requests_rank_nobody(champion_scorer):
    _, score, _ = champion_scorer
    same = [0.5, 0.5, 50]
    assert [d for d, _ in rank(score, _rows([7, 3, 5], [same, same, same]))] == [7, 3, 5]
    assert rank(score, FeatureRows([], np.empty((0, 3)), [42])) == []


def test_folded_scorer_equals_predict_proba_on_all_driver_statistics(feast_settings, champion_scorer):
    model, score, kind = champion_scorer
    assert kind == "folded-linear"
    stats = pd.read_parquet(feast_settings.feast_repo_path / "data" / STATS_FILE)
    matrix = stats[list(model.feature_names)].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(score(matrix), model.estimator.predict_proba(matrix)[:, 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "estimator",
    [
        make_pipeline(HistGradientBoostingClassifier(max_iter=5)),
        make_pipeline(MinMaxScaler(), LogisticRegression()),
        make_pipeline(StandardScaler(with_mean=False), FunctionTransformer(np.log1p), LogisticRegression()),
        make_pipeline(FunctionTransformer(np.sqrt), LogisticRegression()),
    ],
)
def test_other_estimators_are_called_as_they_are(estimator):
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1, (200, 3)), rng.integers(0, 2, 200)
    estimator.fit(x, y)
    score, kind = compile_scorer(estimator, 3)
    assert kind == "predict_proba"
    np.testing.assert_array_equal(score(x), estimator.predict_proba(x)[:, 1])


def test_plain_logistic_regression_is_folded_too():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 5, (300, 3)), rng.integers(0, 2, 300)
    estimator = LogisticRegression().fit(x, y)
    score, kind = compile_scorer(estimator, 3)
    assert kind == "folded-linear"
    np.testing.assert_allclose(score(x), estimator.predict_proba(x)[:, 1], rtol=0, atol=1e-12)


def test_the_trained_version_carries_its_scorer_and_is_served_without_its_estimator(feast_settings, champion):
    model = load_alias(feast_settings)
    assert model.linear_scorer is not None
    score, kind = model.scorer()
    assert kind == FOLDED and "estimator" not in model.__dict__  # scikit-learn's model never loaded
    stats = pd.read_parquet(feast_settings.feast_repo_path / "data" / STATS_FILE)
    matrix = stats[list(model.feature_names)].to_numpy(dtype=np.float64)
    extremes = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1e9], [1e-9, 1.0, 1.0]])
    for rows in (matrix, extremes):
        expected = model.estimator.predict_proba(rows)[:, 1]
        np.testing.assert_allclose(score(rows), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        {},
        {METADATA_KEY: None},
        {METADATA_KEY: {"log1p": True, "mean": [0, 0], "scale": [1, 1], "coef": [1, 1]}},  # no intercept
        {METADATA_KEY: {"log1p": True, "mean": [0], "scale": [1], "coef": [1], "intercept": 0}},  # 1 input
        {METADATA_KEY: {"log1p": True, "mean": "ab", "scale": [1, 1], "coef": [1, 1], "intercept": 0}},
    ],
)
def test_metadata_without_a_fitting_scorer_gives_none(metadata):
    assert LinearScorer.from_metadata(metadata, 2) is None


def test_a_scorer_survives_its_trip_through_metadata():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(0, 5, (300, 2)), rng.integers(0, 2, 300)
    estimator = make_pipeline(FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression()).fit(x, y)
    folded = LinearScorer.fold(estimator)
    again = LinearScorer.from_metadata({METADATA_KEY: folded.to_metadata()}, 2)
    assert again == folded
    np.testing.assert_allclose(again.scorer()(x), estimator.predict_proba(x)[:, 1], rtol=0, atol=1e-12)
