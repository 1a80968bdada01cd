"""The ranking of one request, end to end: pick the model, read features, score, rank, record.

`Ranker.start` does all start-up work (models, feature store, readers) once per worker, so that
`Ranker.answer` does only request work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
import zlib
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from driver_ranker import metrics
from driver_ranker.config import Settings
from driver_ranker.errors import FeatureStoreUnavailable
from driver_ranker.features.online import FeatureRows
from driver_ranker.features.store import REDIS_ERRORS, open_store
from driver_ranker.model.scoring import rank
from driver_ranker.serving.bandit import Bandit
from driver_ranker.serving.drift import DriftMonitor
from driver_ranker.serving.lifecycle import ARM, CANARY, CHAMPION, SHADOW, ModelManager, ServedModel
from driver_ranker.serving.outcomes import OutcomeStore, Prediction
from driver_ranker.serving.request_log import annotate
from driver_ranker.serving.schemas import InferenceRequest, InferenceResponse

logger = logging.getLogger(__name__)

SHADOW_BACKLOG = 8
"""Shadow scorings in flight per worker; past it, shadow work is skipped rather than queued."""
ALL_UNKNOWN_LOG_INTERVAL_S = 60.0


def canary_bucket(request_id: str | None) -> float:
    """A request's place in [0, 100): fixed by its id (a retry lands on the same model), else random."""
    if request_id is None:
        return random.uniform(0, 100)
    return zlib.crc32(request_id.encode()) % 10_000 / 100


class Ranker:
    def __init__(
        self,
        settings: Settings,
        manager: ModelManager,
        online_store: str,
        outcomes: OutcomeStore | None = None,
    ):
        self.settings = settings
        self.manager = manager
        self.online_store = online_store
        self.outcomes = outcomes
        """The prediction log and trip outcomes; None with PREDICTION_LOG off or no Redis."""
        self.bandit = (
            Bandit(outcomes, settings.bandit_floor) if outcomes and settings.routing == "bandit" else None
        )
        self.drift = DriftMonitor(
            settings.drift_sample_rows, settings.drift_min_rows, settings.drift_check_interval_s
        )
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._shadow_tasks: set[asyncio.Task] = set()
        self._all_unknown_logged_at = -ALL_UNKNOWN_LOG_INTERVAL_S
        self._not_ready_reason: str | None = None
        # Labelled children looked up once: `labels()` costs twice the increment it precedes.
        self._read_ok = metrics.FEATURE_READ_SECONDS.labels(outcome="ok")
        self._read_unavailable = metrics.FEATURE_READ_SECONDS.labels(outcome="unavailable")
        self._by_version: dict[str, tuple[Any, Any]] = {}
        """version -> its (best score histogram, answered requests counter)."""

    @classmethod
    def start(cls, settings: Settings) -> Ranker:
        """Loads the models and opens the online store; raises ModelUnavailable when no model can serve."""
        metrics.forget_dead_workers()
        store = open_store(settings, offline=False)
        manager = ModelManager(settings, store)
        manager.start()
        online_store = type(store.config.online_store).__name__.removesuffix("OnlineStoreConfig")
        champion = manager.champion
        logger.info(
            "serving %s v%s (@%s, from %s) with features %s from %s via %s",
            champion.model.name, champion.model.version, champion.model.alias, champion.model.source,
            list(champion.model.feature_names), online_store, champion.reader.kind,
        )  # fmt: skip
        outcomes = None
        if settings.prediction_log and manager.redis is not None:
            outcomes = OutcomeStore(
                manager.redis, store.project, settings.outcome_retention_s, settings.prediction_log_queue
            )
        return cls(settings, manager, online_store, outcomes)

    def background_work(self) -> list[Coroutine[Any, Any, None]]:
        """What each worker runs beside its requests: following the registry, writing the log,
        computing drift."""
        work = [self.manager.watch()]
        if self.outcomes is not None:
            work.append(self.outcomes.write_forever())
        if self.bandit is not None:
            work.append(self.bandit.refresh_forever(lambda: sorted(set(self.arms().values()))))
        if self.settings.drift_sample_rows:
            work.append(self.drift.export_forever(lambda: self.manager.champion.model))
        return work

    def arms(self) -> dict[str, str]:
        """The bandit's arms served now: role -> version."""
        served = self.manager.served
        return {
            role: s.model.version for role, s in served.items() if role == CHAMPION or role.startswith(ARM)
        }

    async def pick(self, request_id: str | None) -> tuple[str, ServedModel]:
        """The role (champion, canary, a bandit arm) that answers this request, and its model."""
        served = self.manager.served
        if self.bandit is not None:
            role = None
            if request_id is not None:  # a retry keeps the arm that answered it
                try:
                    role = await self.outcomes.role_of(request_id)
                except (TimeoutError, *REDIS_ERRORS):
                    role = None
            if role not in served or not (role == CHAMPION or role.startswith(ARM)):
                role = self.bandit.choose(self.arms(), request_id)
            return role, served[role]
        canary = served.get(CANARY)
        if canary is not None and canary_bucket(request_id) < self.settings.canary_percent:
            return CANARY, canary
        return CHAMPION, served[CHAMPION]

    async def answer(self, request: InferenceRequest) -> InferenceResponse:
        """Raises FeatureStoreUnavailable when the online store does not answer in time."""
        started = time.perf_counter()
        # This request keeps this model, whatever swaps meanwhile.
        role, served = await self.pick(request.request_id)
        request_id = request.request_id or uuid.uuid4().hex
        driver_ids = list(dict.fromkeys(request.driver_ids))
        try:
            rows = await served.reader.read(driver_ids)
        except FeatureStoreUnavailable:
            self._read_unavailable.observe(time.perf_counter() - started)
            raise
        self._read_ok.observe(time.perf_counter() - started)
        metrics.DRIVERS.inc(len(driver_ids))
        ranking = rank(served.score, rows)
        if role == CHAMPION:
            self.drift.observe(served.model, rows.matrix)
        best = ranking[0][0] if ranking else None
        version = served.model.version
        best_scores, answered = self._version_metrics(version)
        if ranking:
            best_scores.observe(ranking[0][1])
            metrics.FEATURE_AGE_SECONDS.observe(float(rows.ages_s.max()))
        if rows.unknown_ids:
            metrics.UNKNOWN_DRIVERS.inc(len(rows.unknown_ids))
            if len(rows.unknown_ids) == len(driver_ids):
                self._all_unknown(len(driver_ids))
        if rows.stale_ids:
            metrics.STALE_DRIVERS.inc(len(rows.stale_ids))
        answered.inc()
        shadow = self.manager.served.get(SHADOW)
        if shadow is not None and ranking:
            self._start_shadow(shadow, served, driver_ids, rows, ranking, request_id)
        annotate(
            request_id=request_id,
            model_version=version,
            best_driver_id=best,
            drivers=len(driver_ids),
            unknown=len(rows.unknown_ids),
            stale=len(rows.stale_ids),
        )
        m = served.model
        if self.outcomes is not None:
            best_score = ranking[0][1] if ranking else None
            self.outcomes.record(
                Prediction(request_id, m.name, version, role, best, best_score, len(driver_ids), time.time())
            )
        # Validated from plain data in one call: a hundred DriverScore(...) calls cost twice as much.
        return InferenceResponse.model_validate(
            {
                "request_id": request_id,
                "best_driver_id": best,
                "scores": [{"driver_id": d, "score": s} for d, s in ranking],
                "unknown_driver_ids": rows.unknown_ids,
                "stale_driver_ids": rows.stale_ids,
                "model": {"name": m.name, "version": m.version, "alias": m.alias},
            }
        )

    def _version_metrics(self, version: str) -> tuple[Any, Any]:
        children = self._by_version.get(version)
        if children is None:
            children = self._by_version[version] = (
                metrics.BEST_SCORE.labels(version=version),
                metrics.REQUESTS.labels(outcome="ok", version=version),
            )
        return children

    def _all_unknown(self, drivers: int) -> None:
        """Counts a request in which no driver had features, and says so in the log at most once a
        minute: answered 200s over an empty online store must not look healthy."""
        metrics.ALL_UNKNOWN.inc()
        now = time.monotonic()
        if now - self._all_unknown_logged_at >= ALL_UNKNOWN_LOG_INTERVAL_S:
            self._all_unknown_logged_at = now
            logger.warning(
                "every driver of a request (%d) is unknown to the online store %s: is it empty "
                "(run `make features`, or materialize)?",
                drivers, self.online_store,
            )  # fmt: skip

    async def ready(self) -> bool:
        """/readyz: a champion is loaded and its reader can serve (the reader says why not)."""
        reason = await self.manager.champion.reader.readiness()
        if reason != self._not_ready_reason:
            self._not_ready_reason = reason
            if reason:
                logger.warning("not ready: %s", reason)
            else:
                logger.info("ready")
        return reason is None

    def _start_shadow(
        self,
        shadow: ServedModel,
        served: ServedModel,
        driver_ids: list[int],
        rows: FeatureRows,
        ranking: list[tuple[int, float]],
        request_id: str,
    ) -> None:
        if len(self._shadow_tasks) >= SHADOW_BACKLOG:
            metrics.SHADOW.labels(outcome="skipped").inc()
            return
        task = asyncio.create_task(self._shadow(shadow, served, driver_ids, rows, dict(ranking), request_id))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(
        self,
        shadow: ServedModel,
        served: ServedModel,
        driver_ids: list[int],
        rows: FeatureRows,
        scores: dict[int, float],
        request_id: str,
    ) -> None:
        """Scores the request with the shadow model after the answer; never raises, never blocks it."""
        try:
            # The served rows only if they are the shadow's own inputs: same service, same order.
            same_inputs = (shadow.model.feature_service, shadow.model.feature_names) == (
                served.model.feature_service,
                served.model.feature_names,
            )
            shadow_rows = rows if same_inputs else await shadow.reader.read(driver_ids)
            loop = asyncio.get_running_loop()
            ranking = await loop.run_in_executor(self._shadow_pool, rank, shadow.score, shadow_rows)
        except Exception as exc:  # a shadow must never affect serving: count it, log it, drop it
            metrics.SHADOW.labels(outcome="failed").inc()
            logger.warning("shadow v%s failed on %s: %r", shadow.model.version, request_id, exc)
            return
        best = next(iter(scores))
        shadow_best = ranking[0][0] if ranking else None
        diff = max((abs(scores[d] - s) for d, s in ranking if d in scores), default=0.0)
        metrics.SHADOW.labels(outcome="same_best" if shadow_best == best else "other_best").inc()
        metrics.SHADOW_SCORE_DIFF.observe(diff)
        logger.info(
            json.dumps(
                {
                    "shadow_of": request_id,
                    "served_version": served.model.version,
                    "shadow_version": shadow.model.version,
                    "same_best": shadow_best == best,
                    "max_score_diff": round(diff, 6),
                }
            )
        )

    def info(self) -> dict:
        """GET /model: the champion's fields at the top, the other roles, refusals, registry state."""

        def describe(served: ServedModel) -> dict:
            m = served.model
            return {
                "name": m.name, "version": m.version, "alias": m.alias, "run_id": m.run_id,
                "feature_names": list(m.feature_names), "feature_service": m.feature_service,
                "loaded_at": m.loaded_at.isoformat(), "source": m.source, "feature_reader": served.reader.kind,
                "scorer": served.scorer_kind,
            }  # fmt: skip

        manager = self.manager
        return describe(manager.champion) | {
            "online_store": self.online_store,
            "worker_pid": os.getpid(),
            "canary": describe(manager.served[CANARY]) | {"percent": self.settings.canary_percent}
            if CANARY in manager.served
            else None,
            "shadow": describe(manager.served[SHADOW]) if SHADOW in manager.served else None,
            "bandit": self.bandit.describe(self.arms()) if self.bandit is not None else None,
            "refused": manager.refused,
            "registry_checked_at": manager.checked_at.isoformat() if manager.checked_at else None,
            "registry_state": manager.registry_state,
            "registry_error": manager.registry_error,
            "drift": self.drift.describe(manager.champion.model),
        }
