"""A worker's watch on feature drift: the latest feature rows its champion scored, and their PSI
per feature against the champion's training reference (model/drift.py), exported as metrics.

The request path only copies its rows into a ring buffer; PSI is computed off it, every
DRIFT_CHECK_INTERVAL_S, in the worker's background work.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import numpy as np

from driver_ranker import metrics
from driver_ranker.model.drift import verdict
from driver_ranker.model.registry import LoadedModel


class DriftMonitor:
    def __init__(self, capacity: int, min_rows: int, interval_s: float) -> None:
        self.capacity = capacity
        self.min_rows = min_rows
        self.interval_s = interval_s
        self._model: LoadedModel | None = None
        self._sample = np.empty((0, 0))
        self._next = 0
        self._filled = 0
        self._exported: set[str] = set()
        self.psi: dict[str, float] = {}

    def _follow(self, model: LoadedModel) -> None:
        """A new sample for a new champion: its own features and reference."""
        if model is not self._model:
            self._model = model
            self._sample = np.empty((self.capacity, len(model.feature_names)))
            self._next = self._filled = 0
            self.psi = {}

    def observe(self, model: LoadedModel, matrix: np.ndarray) -> None:
        """Keeps the rows `model` scored (request path: one or two slice copies)."""
        self._follow(model)
        if model.drift_reference is None or not self.capacity or not len(matrix):
            return
        rows = matrix[-self.capacity :]
        first = min(len(rows), self.capacity - self._next)
        self._sample[self._next : self._next + first] = rows[:first]
        self._sample[: len(rows) - first] = rows[first:]
        self._next = (self._next + len(rows)) % self.capacity
        self._filled = min(self._filled + len(rows), self.capacity)

    def export(self, champion: LoadedModel) -> dict[str, float]:
        """Computes PSI per feature from the sample of `champion` (the one serving now: a swap with no
        request since starts an empty sample) and sets the gauges; a feature the model does not
        have (or too small a sample) reads NaN, which no alert fires on."""
        self._follow(champion)
        metrics.DRIFT_SAMPLE_ROWS.set(self._filled)
        psi: dict[str, float] = {}
        if champion.drift_reference is not None and self._filled >= self.min_rows:
            psi = champion.drift_reference.psi_of(champion.feature_names, self._sample[: self._filled])
        for feature in self._exported - psi.keys():
            metrics.FEATURE_PSI.labels(feature=feature).set(math.nan)
        for feature, value in psi.items():
            metrics.FEATURE_PSI.labels(feature=feature).set(value)
        self._exported |= psi.keys()
        self.psi = psi
        return psi

    async def export_forever(self, champion: Callable[[], LoadedModel]) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.export(champion())

    def describe(self, champion: LoadedModel) -> dict:
        """GET /model's `drift`: the sample and the last PSI per feature, with its verdict."""
        self._follow(champion)
        return {
            "reference": champion.drift_reference is not None,
            "sample_rows": self._filled,
            "min_rows": self.min_rows,
            "psi": {f: {"value": round(v, 4), "verdict": verdict(v)} for f, v in self.psi.items()},
        }
