"""The ranking of one request, end to end: dedupe, read features, score, rank, record.

`Ranker.start` does all start-up work (model, feature store, reader) once per worker, so that
`Ranker.answer` does only request work.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from driver_ranker import metrics
from driver_ranker.config import Settings
from driver_ranker.feature_store import open_store
from driver_ranker.online_features import OnlineFeatureReader, open_reader
from driver_ranker.ranking import rank
from driver_ranker.registry import LoadedModel, load_alias
from driver_ranker.schemas import DriverScore, InferenceRequest, InferenceResponse, ModelInfo, ModelRef

logger = logging.getLogger(__name__)
request_log = logging.getLogger("driver_ranker.requests")


class Ranker:
    def __init__(self, model: LoadedModel, reader: OnlineFeatureReader, online_store: str):
        self.model = model
        self.reader = reader
        self.online_store = online_store
        self._model_ref = ModelRef(name=model.name, version=model.version, alias=model.alias)
        metrics.MODEL_VERSION.labels(name=model.name, version=model.version, alias=model.alias).set(1)

    @classmethod
    def start(cls, settings: Settings) -> Ranker:
        """Loads the champion and opens the online store; raises when either is unavailable."""
        model = load_alias(settings)
        store = open_store(settings)
        reader = open_reader(
            store, model.feature_service, model.feature_names, settings.feature_read_timeout_s
        )
        online_store = type(store.config.online_store).__name__.removesuffix("OnlineStoreConfig")
        logger.info(
            "serving %s v%s (@%s) with features %s from %s via %s",
            model.name,
            model.version,
            model.alias,
            list(model.feature_names),
            online_store,
            reader.kind,
        )
        return cls(model, reader, online_store)

    async def answer(self, request: InferenceRequest) -> InferenceResponse:
        """Raises FeatureStoreUnavailable when the online store does not answer in time."""
        started = time.perf_counter()
        request_id = request.request_id or uuid.uuid4().hex
        driver_ids = list(dict.fromkeys(request.driver_ids))
        rows = await self.reader.read(driver_ids)
        metrics.FEATURE_READ_SECONDS.observe(time.perf_counter() - started)
        ranking = rank(self.model, rows)
        best = ranking[0][0] if ranking else None
        if ranking:
            metrics.BEST_SCORE.observe(ranking[0][1])
        if rows.unknown_ids:
            metrics.UNKNOWN_DRIVERS.inc(len(rows.unknown_ids))
        metrics.REQUESTS.labels(outcome="ok").inc()
        request_log.info(
            json.dumps(
                {
                    "request_id": request_id,
                    "model_version": self.model.version,
                    "best_driver_id": best,
                    "drivers": len(driver_ids),
                    "unknown": len(rows.unknown_ids),
                    "latency_ms": round((time.perf_counter() - started) * 1e3, 3),
                }
            )
        )
        return InferenceResponse(
            request_id=request_id,
            best_driver_id=best,
            scores=[DriverScore(driver_id=d, score=s) for d, s in ranking],
            unknown_driver_ids=rows.unknown_ids,
            model=self._model_ref,
        )

    def info(self) -> ModelInfo:
        m = self.model
        return ModelInfo(
            name=m.name,
            version=m.version,
            alias=m.alias,
            run_id=m.run_id,
            feature_names=list(m.feature_names),
            feature_service=m.feature_service,
            loaded_at=m.loaded_at,
            online_store=self.online_store,
            feature_reader=self.reader.kind,
        )
