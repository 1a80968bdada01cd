"""Bandit routing between model versions (ROUTING=bandit): Thompson sampling on a Beta posterior of
trip completions per arm, shared by every worker and replica through the prediction log's Redis.

The arms are the champion and one role per alias in BANDIT_ALIASES (`arm:<alias>`), each the
version its alias names now. An arm's posterior is Beta(1 + completed, 1 + not completed) over the
outcomes posted to /feedback for the driver it recommended; a version moved under an alias starts
from the uniform prior. Each worker re-reads the counts once a second (one Redis command), off the
request path. With probability BANDIT_FLOOR x arms a request goes to an arm drawn uniformly, so no
arm gets less than BANDIT_FLOOR of the traffic and a starved arm can still prove itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from collections import Counter
from dataclasses import dataclass

from driver_ranker import metrics
from driver_ranker.features.store import REDIS_ERRORS
from driver_ranker.serving.outcomes import OutcomeStore

logger = logging.getLogger(__name__)

REFRESH_S = 1.0


@dataclass(frozen=True)
class Posterior:
    completed: int = 0
    failed: int = 0

    @property
    def alpha(self) -> int:
        return 1 + self.completed

    @property
    def beta(self) -> int:
        return 1 + self.failed

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)


class Bandit:
    def __init__(self, outcomes: OutcomeStore, floor: float):
        self._outcomes = outcomes
        self.floor = floor
        self.posteriors: dict[str, Posterior] = {}
        """Per model version."""
        self.assignments: Counter[str] = Counter()
        """Per arm (role), requests this worker sent to it."""

    def choose(self, arms: dict[str, str], request_id: str | None) -> str:
        """The arm (role) for a request, from `arms` (role -> version). The draws are seeded by the
        request id when there is one, so a retry lands on the same arm while the posteriors stand."""
        rng = random.Random(zlib.crc32(request_id.encode())) if request_id else random
        roles = sorted(arms)
        if rng.random() < self.floor * len(roles):
            role = rng.choice(roles)
        else:
            draws = {}
            for r in roles:
                posterior = self.posteriors.get(arms[r], Posterior())
                draws[r] = rng.betavariate(posterior.alpha, posterior.beta)
            role = max(draws, key=draws.__getitem__)
        self.assignments[role] += 1
        metrics.BANDIT_ASSIGNMENTS.labels(arm=role).inc()
        return role

    async def refresh(self, versions: list[str]) -> None:
        counts = await self._outcomes.arm_counts(versions)
        self.posteriors = {v: Posterior(*counts[v]) for v in versions}
        for version, posterior in self.posteriors.items():
            metrics.BANDIT_POSTERIOR_MEAN.labels(version=version).set(posterior.mean)

    async def refresh_forever(self, versions) -> None:
        """Re-reads the shared counts every REFRESH_S; `versions()` gives the arms' versions now."""
        while True:
            try:
                await self.refresh(versions())
            except (TimeoutError, *REDIS_ERRORS) as exc:  # keep the last posteriors; next time
                logger.warning("bandit posteriors not refreshed: %r", exc)
            await asyncio.sleep(REFRESH_S)

    def describe(self, arms: dict[str, str]) -> dict:
        """GET /model: per arm its version, posterior and this worker's share of the requests."""
        total = sum(self.assignments[r] for r in arms) or 1
        return {
            role: {
                "version": version,
                "completed": self.posteriors.get(version, Posterior()).completed,
                "not_completed": self.posteriors.get(version, Posterior()).failed,
                "posterior_mean": round(self.posteriors.get(version, Posterior()).mean, 4),
                "share": round(self.assignments[role] / total, 4),
            }
            for role, version in sorted(arms.items())
        }
