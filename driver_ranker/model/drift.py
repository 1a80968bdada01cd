"""Feature drift: each feature's training distribution, kept with the model version, and the
population stability index (PSI) of the features served against it.

Training cuts each feature at its deciles and records the share of training rows in each bin (a
value many rows share, such as a flag's 0, gets a bin of its own, and a missing value, NaN, has one
too); the reference goes into the MLmodel file's `metadata`, so it travels with the version wherever the
model goes (the registry, the Bento). PSI = sum over bins of (served - reference) x ln(served /
reference): under 0.1 the population is stable, 0.1 to 0.25 it moved, over 0.25 it is another
population than the one the model learned from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METADATA_KEY = "drift_reference"
"""Key of the reference in the MLmodel file's metadata."""
BINS = 10
SHARE_FLOOR = 1e-4
"""Share given to an empty bin: PSI's logarithm is undefined at 0, and one empty bin must not
read as infinite drift."""
STABLE_BELOW = 0.1
SHIFTED_ABOVE = 0.25


def _bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Rows per bin: len(edges) + 1 value bins, then the NaNs."""
    missing = np.isnan(values)
    counts = np.bincount(np.searchsorted(edges, values[~missing], side="right"), minlength=len(edges) + 1)
    return np.append(counts, missing.sum())


@dataclass(frozen=True)
class FeatureReference:
    edges: np.ndarray
    """Inner cut points, ascending and distinct; value bin i holds v with edges[i-1] <= v < edges[i]."""
    shares: np.ndarray
    """Share of the training rows in each bin: len(edges) + 1 value bins, then NaN's."""

    def shares_of(self, values: np.ndarray) -> np.ndarray:
        """Share of `values` in each of this feature's bins."""
        return _bin_counts(self.edges, values) / max(len(values), 1)

    def psi(self, values: np.ndarray) -> float:
        return psi(self.shares, self.shares_of(values))


def psi(reference: np.ndarray, served: np.ndarray) -> float:
    """Population stability index between two sets of bin shares."""
    expected = np.maximum(reference, SHARE_FLOOR)
    actual = np.maximum(served, SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def verdict(value: float) -> str:
    if value < STABLE_BELOW:
        return "stable"
    return "moved" if value <= SHIFTED_ABOVE else "shifted"


@dataclass(frozen=True)
class DriftReference:
    features: Mapping[str, FeatureReference]

    @classmethod
    def from_training(cls, matrix: np.ndarray, names: Sequence[str], bins: int = BINS) -> DriftReference:
        """Decile bins of each column of the training matrix (columns in `names` order)."""
        features = {}
        for column, name in enumerate(names):
            values = matrix[:, column].astype(float)
            present = values[~np.isnan(values)]
            edges = np.unique(np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])) if len(present) else []
            # A cut at a value rows share puts that value with everything above it: a constant
            # feature, or a flag's 0 and 1, would be one bin and never drift. Such a value gets
            # its own bin, [v, next float after v).
            shared = [e for e in edges if np.count_nonzero(present == e) > 1]
            edges = np.unique(np.concatenate([edges, np.nextafter(shared, np.inf)]))
            features[name] = FeatureReference(edges, _bin_counts(edges, values) / len(values))
        return cls(features)

    def to_metadata(self) -> dict[str, Any]:
        """Plain lists, for the MLmodel file (YAML)."""
        return {
            name: {"edges": ref.edges.tolist(), "shares": ref.shares.tolist()}
            for name, ref in self.features.items()
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> DriftReference | None:
        """The reference a model's metadata carries; None for a version trained without one (one
        registered from another tool, or before drift was recorded)."""
        raw = (metadata or {}).get(METADATA_KEY)
        if not raw:
            return None
        features = {}
        for name, part in raw.items():
            edges, shares = np.asarray(part["edges"], float), np.asarray(part["shares"], float)
            if len(shares) == len(edges) + 1:  # recorded before NaN had a bin: training had none
                shares = np.append(shares, 0.0)
            features[name] = FeatureReference(edges, shares)
        return cls(features)

    def psi_of(self, names: Sequence[str], matrix: np.ndarray) -> dict[str, float]:
        """PSI of each column of `matrix` (columns in `names` order) that the reference knows."""
        return {
            name: self.features[name].psi(matrix[:, column])
            for column, name in enumerate(names)
            if name in self.features
        }
