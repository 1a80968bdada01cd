"""Drift's parts on their own: the training reference's bins (shared values and NaN included), PSI,
the worker's ring buffer and what it exports across a swap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import REGISTRY

from driver_ranker.config import Settings
from driver_ranker.model.drift import SHIFTED_ABOVE, STABLE_BELOW, DriftReference
from driver_ranker.model.registry import LoadedModel
from driver_ranker.serving.drift import DriftMonitor

RNG = np.random.default_rng(7)
N = 20_000


def model(names: tuple[str, ...], reference: DriftReference | None, version: str = "1") -> LoadedModel:
    return LoadedModel(
        name="m", version=version, alias="champion", run_id="", feature_names=names,
        feature_service="s", location="", drift_reference=reference,
    )  # fmt: skip


def psi_gauge(feature: str) -> float | None:
    return REGISTRY.get_sample_value("driver_ranker_feature_psi", {"feature": feature})


def test_a_continuous_feature_is_cut_at_its_deciles_and_the_same_population_is_stable():
    values = RNG.normal(size=N)
    reference = DriftReference.from_training(values[:, None], ["x"])
    feature = reference.features["x"]
    assert len(feature.edges) == 9 and np.allclose(feature.shares[:-1], 0.1, atol=0.005)
    assert feature.shares[-1] == 0  # no NaN at training
    assert feature.psi(RNG.normal(size=5_000)) < STABLE_BELOW
    assert feature.psi(RNG.normal(0.5, size=5_000)) > 0.1


@pytest.mark.parametrize(
    ("training", "served"),
    [
        (np.full(N, 3.0), np.full(5_000, 9.0)),  # constant at training, another constant served
        ((RNG.random(N) < 0.05).astype(float), np.ones(5_000)),  # a flag, 5% set, then always set
        (RNG.integers(0, 3, N) * (RNG.random(N) < 0.2), np.zeros(5_000)),  # mostly 0, then only 0
    ],
    ids=["constant", "flag", "mostly-zero"],
)
def test_a_value_many_rows_share_has_its_own_bin_so_it_can_drift(training, served):
    feature = DriftReference.from_training(training[:, None], ["x"]).features["x"]
    assert feature.psi(training[: len(served)]) < STABLE_BELOW
    assert feature.psi(served) > SHIFTED_ABOVE


def test_missing_values_served_where_training_had_none_are_drift():
    feature = DriftReference.from_training(RNG.normal(size=N)[:, None], ["x"]).features["x"]
    served = np.where(RNG.random(5_000) < 0.3, np.nan, RNG.normal(size=5_000))
    assert feature.psi(served) > SHIFTED_ABOVE


def test_the_reference_survives_the_mlmodel_metadata_and_older_records_read():
    reference = DriftReference.from_training(RNG.normal(size=(N, 2)), ["a", "b"])
    again = DriftReference.from_metadata({"drift_reference": reference.to_metadata()})
    for name in ("a", "b"):
        np.testing.assert_array_equal(again.features[name].edges, reference.features[name].edges)
        np.testing.assert_array_equal(again.features[name].shares, reference.features[name].shares)
    older = {"a": {"edges": [0.0], "shares": [0.5, 0.5]}}  # before NaN had its bin
    assert DriftReference.from_metadata({"drift_reference": older}).features["a"].shares.tolist() == [
        0.5,
        0.5,
        0,
    ]
    assert DriftReference.from_metadata({}) is None and DriftReference.from_metadata(None) is None


def test_the_sample_holds_the_latest_rows_across_wrap_arounds():
    names = ("a", "b")
    served = model(names, DriftReference.from_training(RNG.random((N, 2)), names))
    monitor = DriftMonitor(capacity=97, min_rows=10, interval_s=1)
    sent = []
    for size in (5, 40, 1, 60, 33, 200, 7, 3):  # wraps mid-request, and one request over capacity
        rows = RNG.random((size, 2))
        sent.append(rows)
        monitor.observe(served, rows)
    latest = np.vstack(sent)[-97:]
    assert monitor.describe(served)["sample_rows"] == 97

    # The ring's order is its own; its rows are the latest 97 sent, each once.
    def by_rows(matrix: np.ndarray) -> np.ndarray:
        return matrix[np.lexsort(matrix.T[::-1])]

    np.testing.assert_array_equal(by_rows(monitor._sample), by_rows(latest))


def test_a_swap_starts_a_new_sample_and_blanks_features_the_new_version_lacks():
    old_names, new_names = ("drift_t_a", "drift_t_b"), ("drift_t_a",)
    old = model(old_names, DriftReference.from_training(RNG.random((N, 2)), old_names))
    monitor = DriftMonitor(capacity=1_000, min_rows=100, interval_s=1)
    monitor.observe(old, RNG.random((500, 2)))
    assert set(monitor.export(old)) == set(old_names)
    assert psi_gauge("drift_t_b") < STABLE_BELOW

    new = model(new_names, DriftReference.from_training(RNG.random((N, 1)), new_names), version="2")
    assert monitor.export(new) == {}  # swapped in, no request yet: an empty sample of its own
    assert monitor.describe(new) == {"reference": True, "sample_rows": 0, "min_rows": 100, "psi": {}}
    assert math.isnan(psi_gauge("drift_t_a")) and math.isnan(psi_gauge("drift_t_b"))
    monitor.observe(new, RNG.random((200, 1)))
    assert set(monitor.export(new)) == {"drift_t_a"} and math.isnan(psi_gauge("drift_t_b"))


def test_a_version_without_a_reference_is_served_without_drift():
    bare = model(("a",), None)
    monitor = DriftMonitor(capacity=1_000, min_rows=10, interval_s=1)
    monitor.observe(bare, RNG.random((50, 1)))
    assert monitor.export(bare) == {}
    assert monitor.describe(bare)["reference"] is False


def test_settings_refuse_a_minimum_the_sample_can_never_reach():
    with pytest.raises(ValueError, match="DRIFT_MIN_ROWS"):
        Settings(_env_file=None, drift_sample_rows=200, drift_min_rows=500)
    assert Settings(_env_file=None, drift_sample_rows=0, drift_min_rows=500).drift_sample_rows == 0
