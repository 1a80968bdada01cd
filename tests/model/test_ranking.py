"""Ranking behaviour of the trained champion: better statistics rank higher."""

import numpy as np

from driver_ranker.online_features import FeatureRows
from driver_ranker.ranking import rank
from driver_ranker.registry import load_alias


def _rows(ids, matrix):
    return FeatureRows(list(ids), np.array(matrix, dtype=np.float64), [])


def test_better_statistics_rank_higher(feast_settings, champion):
    model = load_alias(feast_settings)
    ranking = rank(
        model,
        _rows([1, 2, 3], [[0.2, 0.3, 20], [0.9, 0.9, 150], [0.5, 0.6, 60]]),
    )
    assert [driver for driver, _ in ranking] == [2, 3, 1]
    assert all(0 < score < 1 for _, score in ranking)


def test_each_statistic_raises_the_score(feast_settings, champion):
    model = load_alias(feast_settings)
    base = [0.5, 0.5, 50]
    for column, better in enumerate([0.9, 0.9, 200]):
        improved = list(base)
        improved[column] = better
        (first, _), _ = rank(model, _rows([0, 1], [base, improved]))
        assert first == 1, f"raising feature {column} should raise the score"


def test_ties_keep_request_order_and_empty_requests_rank_nobody(feast_settings, champion):
    model = load_alias(feast_settings)
    same = [0.5, 0.5, 50]
    assert [d for d, _ in rank(model, _rows([7, 3, 5], [same, same, same]))] == [7, 3, 5]
    assert rank(model, FeatureRows([], np.empty((0, 3)), [42])) == []
