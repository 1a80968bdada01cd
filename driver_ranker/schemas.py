"""The HTTP contract of POST /inference and GET /model (DESIGN.md), as typed models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from driver_ranker.config import get_settings

INT64_MAX = 2**63 - 1

EXAMPLE_REQUEST = {"request_id": "uuid-1", "driver_ids": [1001, 1002, 1003, 1004, 1005]}
"""The Swagger "Try it out" body; the tests post it too."""

DriverId = Annotated[StrictInt, Field(ge=0, le=INT64_MAX, description="A driver id (1001 up).")]


class InferenceRequest(BaseModel):
    """The drivers who could take a trip (the course service's request shape)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": EXAMPLE_REQUEST})

    request_id: str | None = Field(
        None, max_length=128, description="Echoed in the answer and the logs; generated when absent."
    )
    driver_ids: list[DriverId] = Field(
        min_length=1,
        max_length=get_settings().max_driver_ids,
        description="Candidate drivers; duplicates are scored once.",
    )


class DriverScore(BaseModel):
    driver_id: int
    score: float = Field(description="Probability that the driver completes the trip.")


class ModelRef(BaseModel):
    name: str
    version: str
    alias: str


class InferenceResponse(BaseModel):
    request_id: str
    best_driver_id: int | None = Field(
        description="Highest score; null when no driver is known.",
        json_schema_extra={"nullable": True},  # BentoML's OpenAPI 3.0 document drops `| None`
    )
    scores: list[DriverScore] = Field(description="Known drivers, best first.")
    unknown_driver_ids: list[int] = Field(description="Drivers with no features online; not scored.")
    model: ModelRef
