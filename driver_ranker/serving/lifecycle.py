"""The models a worker serves, and how they change without a restart.

Roles: `champion` (always), `canary` (a share of requests), `shadow` (scored off the response path).
Each role follows a registry alias. A check (in the background every REGISTRY_CHECK_INTERVAL_S,
or forced by POST /admin/reload) loads a moved alias's version off the request path and swaps it
in with one assignment: requests in flight keep the model they started with. A version that cannot
be loaded or prepared, for whatever reason, is refused: the role keeps what it serves, and the
version is not tried again until the alias moves or a reload is forced. A registry that does not
answer, or refuses our credentials, is told apart from a bad version: what is loaded keeps serving.
Without a servable champion at start, the worker serves the model its Bento carries.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil
import redis.asyncio as aioredis
import requests
from feast import FeatureStore
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from driver_ranker import metrics
from driver_ranker.config import Settings
from driver_ranker.errors import ModelUnavailable
from driver_ranker.features.online import OnlineFeatureReader, open_reader
from driver_ranker.features.store import async_redis_client
from driver_ranker.model.registry import (
    LoadedModel,
    connect,
    load_from_bento_store,
    load_version,
    resolve_feature_service,
    version_for_alias,
)
from driver_ranker.model.scoring import Scorer

logger = logging.getLogger(__name__)

CHAMPION, CANARY, SHADOW = "champion", "canary", "shadow"
ARM = "arm:"
"""Prefix of the bandit's arms beside the champion: `arm:<alias>` (ROUTING=bandit)."""

# MLflow's error codes for a registry that answers but will not let us in (HTTP 401 and 403).
DENIED_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"})
# What a registry that does not answer raises, somewhere in the chain MLflow's client wraps.
UNREACHABLE_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def registry_denied(exc: BaseException) -> bool:
    """The registry answered and refused our credentials or permissions."""
    return isinstance(exc, MlflowException) and exc.error_code in DENIED_CODES


def registry_unreachable(exc: BaseException) -> bool:
    """The registry did not answer (or answered that it is unavailable): worth retrying."""
    seen: BaseException | None = exc
    for _ in range(10):  # MLflow chains the transport error as the cause or the context
        if seen is None:
            return False
        if isinstance(seen, UNREACHABLE_ERRORS):
            return True
        if isinstance(seen, MlflowException) and seen.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception as one log- and JSON-friendly line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (ModelUnavailable, LookupError)):
        text = f"{type(exc).__name__}: {text}"
    return text[:limit]


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
        if settings.routing == "bandit":
            for alias in filter(None, (a.strip() for a in settings.bandit_aliases.split(","))):
                self.aliases[f"{ARM}{alias}"] = alias
        elif settings.canary_percent > 0:
            self.aliases[CANARY] = settings.canary_alias
        if settings.shadow_alias:
            self.aliases[SHADOW] = settings.shadow_alias
        self.served: dict[str, ServedModel] = {}
        self.refused: dict[str, dict[str, str]] = {}
        self.checked_at: datetime | None = None
        self.registry_state: str | None = None
        """`ok`, `unreachable` or `denied` after the first check."""
        self.registry_error: str | None = None
        self._lock = threading.Lock()
        self._redis: aioredis.Redis | None = None
        online = store.config.online_store
        if hasattr(online, "connection_string"):
            self._redis = async_redis_client(online, settings.feature_read_timeout_s)

    @property
    def redis(self) -> aioredis.Redis | aioredis.RedisCluster | None:
        """The worker's client of the online store's Redis (None for other stores)."""
        return self._redis

    @property
    def champion(self) -> ServedModel:
        return self.served[CHAMPION]

    def start(self) -> None:
        """Loads every role once. Without a servable champion, serves the model the Bento carries;
        raises ModelUnavailable, saying why, when there is none either."""
        self.check()
        if CHAMPION in self.served:
            return
        name, alias = self.settings.model_name, self.settings.model_alias
        if CHAMPION in self.refused:
            refusal = self.refused[CHAMPION]
            why = f"{name}@{alias} is version {refusal['version']}, refused: {refusal['reason']}"
        elif self.registry_error:
            why = f"the registry at {self.settings.mlflow_tracking_uri} fails ({self.registry_error})"
        else:
            why = f"no version of {name} has the alias {alias!r}: run `make train`"
        tag = self.settings.bento_model_tag or f"{name}:latest"
        try:
            served = self._prepare(load_from_bento_store(tag, alias))
        except Exception as exc:  # bentoml's NotFound, a bad model, features not served: all mean none
            raise ModelUnavailable(
                f"{why}; and BentoML's store has no servable {tag} ({one_line(exc)})"
            ) from exc
        logger.warning(
            "%s; serving %s from BentoML's store until the registry names a servable one", why, tag
        )
        self._swap(CHAMPION, served)

    def check(self, force: bool = False) -> dict[str, str]:
        """Brings every role to its alias's version; returns what happened per role.

        Runs off the request path (start-up, the background loop's thread, the admin route).
        `force` retries versions refused before.
        """
        with self._lock:
            outcome = {}
            try:
                client = connect(self.settings)
                for role, alias in self.aliases.items():
                    outcome[role] = self._check_role(client, role, alias, force)
            except Exception as exc:  # from the registry itself; a bad version is refused in _check_role
                state = "denied" if registry_denied(exc) else "unreachable"
                self._registry_state(state, one_line(exc, 300))
                outcome["registry"] = state
            else:
                self._registry_state("ok", None)
            self.checked_at = datetime.now(UTC)
            return outcome

    def _registry_state(self, state: str, error: str | None) -> None:
        metrics.REGISTRY_CHECKS.labels(outcome=state).inc()
        changed = (state, error) != (self.registry_state, self.registry_error)
        self.registry_state, self.registry_error = state, error
        if not changed:
            return
        uri = self.settings.mlflow_tracking_uri
        if state == "denied":
            logger.error(
                "the registry at %s refuses our credentials or permissions, serving what is loaded: %s "
                "(check MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, and READ on %s)",
                uri, error, self.settings.model_name,
            )  # fmt: skip
        elif state == "unreachable":
            logger.warning("the registry at %s does not answer, serving what is loaded: %s", uri, error)
        else:
            logger.info("the registry at %s answers", uri)

    def _check_role(self, client: MlflowClient, role: str, alias: str, force: bool) -> str:
        version = version_for_alias(client, self.settings.model_name, alias)
        current = self.served.get(role)
        if version is None:
            self.refused.pop(role, None)
            if current is not None and role != CHAMPION:
                del self.served[role]
                metrics.MODEL_VERSION.labels(role=role).set(0)
                return "alias removed: stopped"
            return "no such alias"
        number = str(version.version)
        if current is not None and current.model.version == number and current.model.source == "registry":
            self.refused.pop(role, None)  # the alias came back to what serves: a refusal is history
            return f"v{number} (unchanged)"
        if not force and self.refused.get(role, {}).get("version") == number:
            return f"v{number} refused before"
        try:
            self.store.refresh_registry()  # a feature service applied since start counts
            served = self._prepare(load_version(client, version, alias))
        except Exception as exc:  # any failure to load or prepare refuses the version...
            if registry_unreachable(exc):
                raise  # ...but a registry gone mid-load is an outage: retried at the next check
            return self._refuse(role, number, exc)
        self.refused.pop(role, None)
        before = current.model.version if current else None
        self._swap(role, served)
        return f"v{before} -> v{number}" if before else f"v{number} loaded"

    def _refuse(self, role: str, number: str, exc: Exception) -> str:
        reason = one_line(exc)
        if registry_denied(exc):
            reason = f"the registry refused our credentials or permissions: {reason}"
        self.refused[role] = {"version": number, "reason": reason, "at": datetime.now(UTC).isoformat()}
        metrics.MODEL_REFUSALS.labels(role=role).inc()
        logger.error("refused %s v%s for %s: %s", self.settings.model_name, number, role, reason)
        return f"v{number} refused: {reason}"

    def _prepare(self, model: LoadedModel) -> ServedModel:
        """Settles the feature service, opens its reader (checking every feature is served online)
        and compiles the scorer; raises when any of it fails."""
        model = resolve_feature_service(model, self.store, self.settings.default_feature_service)
        reader = open_reader(
            self.store,
            model.feature_service,
            model.feature_names,
            self.settings.feature_read_timeout_s,
            self._redis,
            force_sdk=self.settings.feature_reader == "feast-sdk",
        )
        score, kind = model.scorer()
        return ServedModel(model, reader, score, kind)

    def _swap(self, role: str, served: ServedModel) -> None:
        old = self.served.get(role)
        self.served[role] = served  # one assignment: a request reads the old or the new, whole
        metrics.MODEL_VERSION.labels(role=role).set(float(served.model.version))
        m = served.model
        logger.info("%s now serves %s v%s (from %s)", role, m.name, m.version, m.source)
        if old is not None:
            metrics.MODEL_SWAPS.labels(role=role).inc()
            del old
            # gc.freeze() at start-up leaves collection to the young generations; the old model,
            # reader and caches hold cycles, so collect them now, off the request path.
            gc.collect()

    async def watch(self) -> None:
        """The background loop of one worker: check the registry every interval, forever."""
        while True:
            await asyncio.sleep(self.settings.registry_check_interval_s)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # a failed check must not end the loop; the next one retries
                logger.exception("registry check failed")
            metrics.forget_dead_workers()


def stop_the_server(reason: Exception) -> None:
    """Stops `bentoml serve` when a worker has no model to serve at all.

    BentoML would start the worker again and again, failing the same way each time, and the server
    would never be ready nor say why in one place; like gunicorn on a worker's boot error, the whole
    server stops with the reason, and whatever supervises it (compose, Kubernetes) decides when to
    try again.
    """
    logger.critical("no model to serve, stopping the server: %s", reason)
    parent = psutil.Process(os.getppid())
    if any("bentoml" in part for part in parent.cmdline()):
        parent.send_signal(signal.SIGTERM)
