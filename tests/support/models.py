"""Models that misbehave on purpose, registered as shadows to prove they cannot hurt serving."""

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class SleepyModel(ClassifierMixin, BaseEstimator):
    """Scores like a constant after sleeping; a slow shadow."""

    def __init__(self, seconds: float = 0.2):
        self.seconds = seconds

    def fit(self, X, y):
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        time.sleep(self.seconds)
        return np.tile([0.5, 0.5], (len(X), 1))


class FailingModel(SleepyModel):
    """Raises on every call; a broken shadow."""

    def predict_proba(self, X):
        raise RuntimeError("this shadow model is broken on purpose")
