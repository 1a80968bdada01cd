"""driver-ranker: the best driver for a trip, from Feast online features and the MLflow champion.

The service only wires parts of the `driver_ranker` package together; see README.md.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
from typing import Any

import bentoml
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse

from driver_ranker import metrics
from driver_ranker.config import get_settings
from driver_ranker.errors import FeatureStoreUnavailable, ModelUnavailable
from driver_ranker.logs import configure_logging
from driver_ranker.serving.admin import AdminDenied, authorize
from driver_ranker.serving.edge import HttpEdge, json_api
from driver_ranker.serving.keepalive import ConnectionRecycler
from driver_ranker.serving.openapi import openapi_document
from driver_ranker.serving.schemas import InferenceRequest, InferenceResponse

settings = get_settings()
# Mounted at "/": its routes are matched before BentoML's own /docs.json, and it serves no docs of its own.
routes = FastAPI(title="driver-ranker", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="driver-ranker",
    workers=settings.workers,
    traffic={"timeout": settings.request_timeout_s, "max_concurrency": settings.max_concurrency},
    http={"port": settings.port},
    # The edge writes the one log line per request; tracing is opt-in (README, Performance).
    logging={"access": {"enabled": False}},
    tracing={} if settings.trace_requests else {"excluded_urls": [".*"]},
)
@bentoml.asgi_app(routes, path="/")
class DriverRanker:
    def __init__(self) -> None:
        # Imported here, not at the top: `bentoml serve` imports this file in its main process
        # too, which needs only the definitions above (Feast alone takes seconds to import).
        from driver_ranker.serving.lifecycle import stop_the_server
        from driver_ranker.serving.ranker import Ranker

        configure_logging()
        try:
            self.ranker = Ranker.start(settings)
        except ModelUnavailable as exc:  # nothing to serve: stop, rather than restart workers forever
            stop_the_server(exc)
            raise

    @bentoml.on_startup
    async def start_background_work(self) -> None:
        """Each worker follows the registry's aliases (lifecycle.py) and writes the prediction log
        (outcomes.py) in the background."""
        self.background = [asyncio.create_task(work) for work in self.ranker.background_work()]
        # Feast, MLflow and pandas leave ~400k objects behind; a full GC pass over them took
        # ~200 ms and showed as the p99. Frozen, later passes see only what requests allocate,
        # and a request allocates a few thousand objects: a young-generation pass every 20,000
        # allocations instead of Python's 700 gave 7-12% more requests/s of 100 drivers (3
        # rounds side by side; within noise at 5 drivers).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)

    # The body is InferenceRequest's JSON object, validated by BentoML; its fields as parameters
    # let BentoML's clients call `client.inference(driver_ids=[...], request_id=...)`.
    @bentoml.api(route="/inference", input_spec=InferenceRequest)
    async def inference(self, driver_ids: list[int], request_id: str | None = None) -> InferenceResponse:
        """Ranks the given drivers by their probability of completing the trip."""
        request = InferenceRequest.model_construct(driver_ids=driver_ids, request_id=request_id)
        try:
            return await self.ranker.answer(request)
        except FeatureStoreUnavailable as exc:
            metrics.REQUESTS.labels(outcome="unavailable", version="").inc()
            return JSONResponse({"error": f"{exc}; retry shortly"}, status_code=503)

    @routes.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        """Records whether the drivers sent for answered requests completed their trips."""
        from driver_ranker.serving.outcomes import feedback_answer

        status, answer = await feedback_answer(self.ranker.outcomes, await request.body())
        return JSONResponse(answer, status_code=status)

    @routes.get("/model")
    def model(self) -> dict[str, Any]:
        """The models this worker serves, where they came from, and the registry's state."""
        return self.ranker.info()

    @routes.post("/admin/reload")
    async def reload(self, request: Request) -> JSONResponse:
        """Checks the registry now (needs `Authorization: Bearer <ADMIN_TOKEN>`)."""
        try:
            authorize(settings, request.headers.get("authorization"))
        except AdminDenied as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        outcome = await asyncio.to_thread(self.ranker.manager.check, True)
        return JSONResponse({"worker_pid": os.getpid(), "roles": outcome})

    async def __is_ready__(self) -> bool:
        return await self.ranker.ready()


@routes.get("/docs.json", include_in_schema=False)
@functools.cache
def openapi() -> dict[str, Any]:
    """The OpenAPI document of the Swagger page at `/`: BentoML's, rewritten to describe driver-ranker."""
    bento = str(DriverRanker.bento.tag) if DriverRanker.bento else None
    return openapi_document(DriverRanker.openapi_spec.asdict(), settings, bento)


# One middleware for the key, limits, keep-alive recycling and the log line; it answers POST
# /inference itself, with this service's `inference` (serving/edge.py says why).
DriverRanker.add_asgi_middleware(
    HttpEdge,
    max_body_bytes=settings.max_body_bytes,
    api_key=settings.api_key,
    recycler=functools.partial(
        ConnectionRecycler, settings.keepalive_max_requests, settings.keepalive_max_age_s, settings.workers
    ),
    apis={"/inference": json_api(DriverRanker, "inference")},
    server=f"BentoML Service/{DriverRanker.name}",
)
