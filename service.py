"""driver-ranker: the best driver for a trip, from Feast online features and the MLflow champion.

The service only wires parts of the `driver_ranker` package together; see README.md.
"""

from __future__ import annotations

import bentoml
from fastapi import FastAPI
from starlette.responses import JSONResponse

from driver_ranker import metrics
from driver_ranker.config import get_settings
from driver_ranker.http_errors import ValidationErrorMiddleware
from driver_ranker.logs import configure_logging
from driver_ranker.online_features import FeatureStoreUnavailable
from driver_ranker.ranker import Ranker
from driver_ranker.schemas import InferenceRequest, InferenceResponse, ModelInfo

settings = get_settings()
routes = FastAPI(title="driver-ranker extras")


@bentoml.service(
    name="driver-ranker",
    workers=settings.workers,
    traffic={"timeout": 10},
    http={"port": settings.port},
)
@bentoml.asgi_app(routes, path="/")
class DriverRanker:
    def __init__(self) -> None:
        configure_logging()
        self.ranker = Ranker.start(settings)

    @bentoml.api(route="/inference")
    async def inference(self, request: InferenceRequest, /) -> InferenceResponse:
        """Ranks the given drivers by their probability of completing the trip."""
        try:
            return await self.ranker.answer(request)
        except FeatureStoreUnavailable as exc:
            metrics.REQUESTS.labels(outcome="unavailable").inc()
            return JSONResponse({"error": f"{exc}; retry shortly"}, status_code=503)

    @routes.get("/model")
    def model(self) -> ModelInfo:
        """The model version this worker serves, and how it reads features."""
        return self.ranker.info()

    async def __is_ready__(self) -> bool:
        return await self.ranker.reader.ping()


DriverRanker.add_asgi_middleware(ValidationErrorMiddleware)
