"""The models a worker serves, and how they change without a restart.

Roles: `champion` (always), `canary` (a share of requests), `shadow` (scored off the response path).
Each role follows a registry alias. A check (in the background every REGISTRY_CHECK_INTERVAL_S,
or forced by POST /admin/reload) loads a moved alias's version off the request path, refuses it
when the online store does not serve its features, and otherwise swaps it in with one assignment:
requests in flight keep the model they started with. With the registry away at start, the
champion comes from BentoML's model store (the model the Bento carries) until the registry answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
from feast import FeatureStore
from mlflow.exceptions import MlflowException

from driver_ranker import metrics
from driver_ranker.config import Settings
from driver_ranker.errors import MissingFeatures, ModelUnavailable
from driver_ranker.online_features import (
    OnlineFeatureReader,
    async_redis_client,
    open_reader,
)
from driver_ranker.ranking import Scorer, compile_scorer
from driver_ranker.registry import (
    LoadedModel,
    connect,
    load_from_bento_store,
    load_version,
    version_for_alias,
)

logger = logging.getLogger(__name__)

CHAMPION, CANARY, SHADOW = "champion", "canary", "shadow"
# What a registry that does not answer raises through MLflow's client.
REGISTRY_ERRORS = (MlflowException, OSError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class ServedModel:
    """A loaded version, its scorer and the reader of the features it needs: swapped as one."""

    model: LoadedModel
    reader: OnlineFeatureReader
    score: Scorer
    scorer_kind: str


class ModelManager:
    def __init__(self, settings: Settings, store: FeatureStore):
        self.settings = settings
        self.store = store
        self.aliases = {CHAMPION: settings.model_alias}
        if settings.canary_percent > 0:
            self.aliases[CANARY] = settings.canary_alias
        if settings.shadow_alias:
            self.aliases[SHADOW] = settings.shadow_alias
        self.served: dict[str, ServedModel] = {}
        self.refused: dict[str, dict[str, str]] = {}
        self.checked_at: datetime | None = None
        self.registry_error: str | None = None
        self._lock = threading.Lock()
        self._redis: aioredis.Redis | None = None
        online = store.config.online_store
        if hasattr(online, "connection_string"):
            self._redis = async_redis_client(online.connection_string, settings.feature_read_timeout_s)

    @property
    def champion(self) -> ServedModel:
        return self.served[CHAMPION]

    def start(self) -> None:
        """Loads every role once; falls back to the Bento's model when the registry is away."""
        self.check()
        if CHAMPION in self.served:
            return
        if self.registry_error is None:
            raise ModelUnavailable(
                f"no servable version of {self.settings.model_name}@{self.settings.model_alias}: "
                f"{self.refused.get(CHAMPION, {}).get('reason', 'run `make train`')}"
            )
        tag = self.settings.bento_model_tag or f"{self.settings.model_name}:latest"
        logger.warning(
            "registry unavailable (%s); starting from %s in BentoML's store", self.registry_error, tag
        )
        try:
            model = load_from_bento_store(tag, self.settings.model_alias)
        except Exception as exc:  # bentoml raises its own NotFound and friends
            raise ModelUnavailable(
                f"the registry at {self.settings.mlflow_tracking_uri} fails ({self.registry_error}) "
                f"and BentoML's store has no {tag} ({exc})"
            ) from exc
        self._swap(CHAMPION, self._prepare(model))

    def check(self, force: bool = False) -> dict[str, str]:
        """Brings every role to its alias's version; returns what happened per role.

        Runs off the request path (start-up, the background loop's thread, the admin route).
        """
        with self._lock:
            outcome = {}
            try:
                client = connect(self.settings)
                for role, alias in self.aliases.items():
                    outcome[role] = self._check_role(client, role, alias, force)
                self.registry_error = None
            except REGISTRY_ERRORS as exc:
                self.registry_error = f"{type(exc).__name__}: {exc}"[:300]
                metrics.REGISTRY_CHECKS.labels(outcome="unreachable").inc()
                logger.warning("registry check failed, serving what is loaded: %s", self.registry_error)
                outcome["registry"] = "unreachable"
            else:
                metrics.REGISTRY_CHECKS.labels(outcome="ok").inc()
            self.checked_at = datetime.now(UTC)
            return outcome

    def _check_role(self, client, role: str, alias: str, force: bool) -> str:
        version = version_for_alias(client, self.settings.model_name, alias)
        current = self.served.get(role)
        if version is None:
            if current is not None and role != CHAMPION:
                del self.served[role]
                self._set_gauge(role, current.model, 0)
                return "alias removed: stopped"
            return "no such alias"
        number = str(version.version)
        if current is not None and current.model.version == number and current.model.source == "registry":
            return f"v{number} (unchanged)"
        if not force and self.refused.get(role, {}).get("version") == number:
            return f"v{number} refused before"
        model = load_version(client, version, alias)
        try:
            self.store.refresh_registry()  # a feature service applied since start counts
            served = self._prepare(model)
        except MissingFeatures as exc:
            self.refused[role] = {"version": number, "reason": str(exc), "at": datetime.now(UTC).isoformat()}
            metrics.MODEL_REFUSALS.labels(role=role).inc()
            logger.error("refused %s v%s for %s: %s", model.name, number, role, exc)
            return f"v{number} refused: {exc}"
        self.refused.pop(role, None)
        before = current.model.version if current else None
        self._swap(role, served)
        return f"v{before} -> v{number}" if before else f"v{number} loaded"

    def _prepare(self, model: LoadedModel) -> ServedModel:
        reader = open_reader(
            self.store,
            model.feature_service,
            model.feature_names,
            self.settings.feature_read_timeout_s,
            self._redis,
        )
        score, kind = compile_scorer(model.estimator, len(model.feature_names))
        return ServedModel(model, reader, score, kind)

    def _swap(self, role: str, served: ServedModel) -> None:
        old = self.served.get(role)
        self.served[role] = served  # one assignment: a request reads the old or the new, whole
        if old is not None:
            self._set_gauge(role, old.model, 0)
            metrics.MODEL_SWAPS.labels(role=role).inc()
        self._set_gauge(role, served.model, 1)
        m = served.model
        logger.info("%s now serves %s v%s (from %s)", role, m.name, m.version, m.source)

    @staticmethod
    def _set_gauge(role: str, model: LoadedModel, value: int) -> None:
        metrics.MODEL_VERSION.labels(
            role=role, name=model.name, version=model.version, alias=model.alias
        ).set(value)

    async def watch(self) -> None:
        """The background loop of one worker: check the registry every interval, forever."""
        while True:
            await asyncio.sleep(self.settings.registry_check_interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a failed check must not end the loop; the next one retries
                logger.exception("registry check failed")
