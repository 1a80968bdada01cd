"""driver-ranker: the best driver for a trip, from Feast online features and the MLflow champion.

The service only wires parts of the `driver_ranker` package together; see README.md.
"""

from __future__ import annotations

import asyncio
import gc
import os

import bentoml
from fastapi import FastAPI, Header
from starlette.responses import JSONResponse

from driver_ranker import metrics
from driver_ranker.admin import AdminDenied, authorize
from driver_ranker.config import get_settings
from driver_ranker.errors import FeatureStoreUnavailable
from driver_ranker.http_errors import RequestGuardMiddleware, ValidationErrorMiddleware
from driver_ranker.logs import configure_logging
from driver_ranker.schemas import InferenceRequest, InferenceResponse

settings = get_settings()
routes = FastAPI(title="driver-ranker extras")


@bentoml.service(
    name="driver-ranker",
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_s, "max_concurrency": settings.max_concurrency},
    http={"port": settings.port},
)
@bentoml.asgi_app(routes, path="/")
class DriverRanker:
    def __init__(self) -> None:
        # Imported here, not at the top: `bentoml serve` imports this file in its main process
        # too, which needs only the definitions above (Feast alone takes seconds to import).
        from driver_ranker.ranker import Ranker

        configure_logging()
        self.ranker = Ranker.start(settings)

    @bentoml.on_startup
    async def follow_the_registry(self) -> None:
        """Each worker checks the registry's aliases in the background (lifecycle.py)."""
        self.watcher = asyncio.create_task(self.ranker.manager.watch())
        # Feast, MLflow and pandas leave ~400k objects behind; a full GC pass over them took
        # ~200 ms and showed as the p99. Frozen, later passes see only what requests allocate.
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/inference")
    async def inference(self, request: InferenceRequest, /) -> InferenceResponse:
        """Ranks the given drivers by their probability of completing the trip."""
        try:
            return await self.ranker.answer(request)
        except FeatureStoreUnavailable as exc:
            metrics.REQUESTS.labels(outcome="unavailable", version="").inc()
            return JSONResponse({"error": f"{exc}; retry shortly"}, status_code=503)

    @routes.get("/model")
    def model(self) -> dict:
        """The models this worker serves, where they came from, and the registry's state."""
        return self.ranker.info()

    @routes.post("/admin/reload")
    async def reload(self, authorization: str | None = Header(None)) -> JSONResponse:
        """Checks the registry now (needs `Authorization: Bearer <ADMIN_TOKEN>`)."""
        try:
            authorize(settings, authorization)
        except AdminDenied as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        outcome = await asyncio.to_thread(self.ranker.manager.check, True)
        return JSONResponse({"worker_pid": os.getpid(), "roles": outcome})

    async def __is_ready__(self) -> bool:
        return await self.ranker.manager.champion.reader.ping()


DriverRanker.add_asgi_middleware(ValidationErrorMiddleware)
DriverRanker.add_asgi_middleware(
    RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes, api_key=settings.api_key
)
