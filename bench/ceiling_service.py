"""The ceiling: a BentoML API that parses the same request and returns a constant response of the
same typed shape, doing no work. No service on BentoML can answer faster."""

from __future__ import annotations

import bentoml

from driver_ranker.config import get_settings
from driver_ranker.serving.schemas import DriverScore, InferenceRequest, InferenceResponse, ModelRef

settings = get_settings()
CONSTANT = InferenceResponse(
    request_id="ceiling",
    best_driver_id=1001,
    scores=[DriverScore(driver_id=1001, score=0.9)],
    unknown_driver_ids=[],
    stale_driver_ids=[],
    model=ModelRef(name=settings.model_name, version="0", alias=settings.model_alias),
)


@bentoml.service(name="ceiling", workers=settings.workers, traffic={"timeout": 10})
class Ceiling:
    @bentoml.api(route="/inference")
    async def inference(self, request: InferenceRequest, /) -> InferenceResponse:
        return CONSTANT
