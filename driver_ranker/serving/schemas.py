"""The HTTP contract (README.md, "The API"): the typed models of POST /inference, GET /model and
POST /admin/reload. `openapi.py` builds the service's OpenAPI document from them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from driver_ranker.config import get_settings

INT64_MAX = 2**63 - 1

EXAMPLE_REQUEST = {"request_id": "uuid-1", "driver_ids": [1001, 1002, 1003, 1004, 1005]}
"""The Swagger "Try it out" body; the tests post it too."""
EXAMPLE_FEEDBACK = {"request_id": "uuid-1", "driver_id": 1003, "completed": True}
MAX_FEEDBACK_EVENTS = 250
"""Events in one POST /feedback: 251 events of usual size (about 90 bytes) fit MAX_BODY_BYTES (64 KiB),
so a list one too long is answered 400 naming the limit, not 413."""


def whole_number(value: object) -> object:
    """1001.0 as 1001: JSON has one number type, and JSON Schema's "integer" (the document's)
    admits 1001.0. Fractions, strings and booleans stay refused (StrictInt)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The bounds before the validator, or pydantic writes them as "ge"/"le" into the JSON Schema.
DriverId = Annotated[
    StrictInt,
    Field(ge=0, le=INT64_MAX, description="A driver id (1001 up)."),
    BeforeValidator(whole_number),
]


class InferenceRequest(BaseModel):
    """The drivers who could take a trip (the course service's request shape)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": EXAMPLE_REQUEST})

    # driver_ids first: a BentoML client's positional argument, `client.inference([1001, 1002])`.
    driver_ids: list[DriverId] = Field(
        min_length=1,
        max_length=get_settings().max_driver_ids,
        description="Candidate drivers; duplicates are scored once.",
    )
    request_id: str | None = Field(
        None, max_length=128, description="Echoed in the answer and the logs; generated when absent."
    )


class DriverScore(BaseModel):
    driver_id: int
    score: float = Field(description="Probability that the driver completes the trip.")


class ModelRef(BaseModel):
    name: str
    version: str
    alias: str


class InferenceResponse(BaseModel):
    """The best driver and the ranking behind it."""

    request_id: str
    best_driver_id: int | None = Field(description="Highest score; null when no driver is scored.")
    scores: list[DriverScore] = Field(description="Scored drivers, best first.")
    unknown_driver_ids: list[int] = Field(description="Drivers with no features online; not scored.")
    stale_driver_ids: list[int] = Field(
        description="Drivers whose features are older than the feature view's ttl (2 days): not scored."
    )
    model: ModelRef = Field(description="The model that answered (the canary's, for a canary request).")


class FeedbackEvent(BaseModel):
    """Whether the driver sent for an answered request completed the trip."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"example": EXAMPLE_FEEDBACK})

    request_id: str = Field(min_length=1, max_length=128, description="The `request_id` of the answer.")
    driver_id: DriverId
    completed: StrictBool


FeedbackEvents = Annotated[list[FeedbackEvent], Field(min_length=1, max_length=MAX_FEEDBACK_EVENTS)]
"""POST /feedback takes one event or a list of them."""


class FeedbackAnswer(BaseModel):
    recorded: int = Field(description="New outcomes stored.")
    repeated: int = Field(description="Outcomes received before, identical (posting again is harmless).")


class ErrorAnswer(BaseModel):
    """Every error the service gives, whoever raises it: one line a person can act on."""

    error: str = Field(description="What went wrong and what to do about it.")


class ReloadAnswer(BaseModel):
    """What one registry check did on the worker that received the request."""

    worker_pid: int
    roles: dict[str, str] = Field(description="Per role (champion, canary, shadow), what the check did.")


# The OpenAPI document
