"""The OpenAPI document of the Swagger page at `/` and of `/docs.json`.

BentoML's own document describes BentoML: its README template as the description, version
"None", its exception schemas, and the mounted routes untagged with FastAPI's validation schemas
that this service never returns. `openapi_document` keeps its paths and rewrites the rest from the
typed models of `schemas.py`, so the Swagger page and schemathesis see what the service answers.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from pydantic.json_schema import models_json_schema

from driver_ranker.config import Settings
from driver_ranker.serving.schemas import (
    EXAMPLE_FEEDBACK,
    EXAMPLE_REQUEST,
    MAX_FEEDBACK_EVENTS,
    ErrorAnswer,
    FeedbackAnswer,
    FeedbackEvent,
    InferenceRequest,
    InferenceResponse,
    ReloadAnswer,
)

REF = "#/components/schemas/{model}"
RANKING, MODEL, ADMIN, PROBES = "Ranking", "Model", "Admin", "Probes and metrics"
TAGS = [
    {"name": RANKING, "description": "The best driver for a trip, and the ranking behind it."},
    {"name": MODEL, "description": "The models this worker serves, and the registry's state."},
    {"name": ADMIN, "description": "Release operations: `Authorization: Bearer <ADMIN_TOKEN>`."},
    {"name": PROBES, "description": "Kubernetes probes and Prometheus metrics (never 429)."},
]
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "API_KEY."},
    "ApiKeyBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "API_KEY as a bearer token: what `bentoml.SyncHTTPClient(url, token=...)` sends.",
    },
    "AdminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN."},
}


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _operations(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """Per operation, what replaces BentoML's and FastAPI's guesses: group, summary, answers, auth.

    Auth is declared only where this server's settings turn it on: without API_KEY /inference is
    open, and without ADMIN_TOKEN /admin/reload answers 404 whatever is sent."""
    busy = _json(
        "ErrorAnswer", f"More than MAX_CONCURRENCY ({settings.max_concurrency}) requests in progress: retry."
    )
    too_large = _json("ErrorAnswer", f"The body is over MAX_BODY_BYTES ({settings.max_body_bytes}).")
    too_slow = _json(
        "ErrorAnswer", f"Not answered within REQUEST_TIMEOUT_S ({settings.request_timeout_s} s)."
    )
    api_key = [{"ApiKey": []}, {"ApiKeyBearer": []}] if settings.api_key is not None else []
    probe = {"tags": [PROBES], "responses": {"200": _text("Alive: an empty line.")}}
    return {
        ("/inference", "post"): {
            "tags": [RANKING],
            "summary": "Rank the drivers who could take a trip",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": REF.format(model="InferenceRequest")},
                        "example": EXAMPLE_REQUEST,
                    }
                },
            },
            "responses": {
                "200": _json("InferenceResponse", "The ranking (200 even when no driver is known)."),
                "400": _json(
                    "ErrorAnswer", "The body is not valid; `error` names each field and what is wrong."
                ),
                "401": _json("ErrorAnswer", "API_KEY is set and the request does not carry it."),
                "413": too_large,
                "415": _json("ErrorAnswer", "The body is not sent as `application/json`."),
                "429": busy,
                "503": _json(
                    "ErrorAnswer",
                    f"The online store did not answer within FEATURE_READ_TIMEOUT_S ({settings.feature_read_timeout_s} s): retry.",
                ),
                "504": too_slow,
            },
            **({"security": api_key} if api_key else {}),
        },
        ("/feedback", "post"): {
            "tags": [RANKING],
            "summary": "Whether the drivers sent for answered requests completed their trips",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": REF.format(model="FeedbackEvent")},
                                {
                                    "type": "array",
                                    "items": {"$ref": REF.format(model="FeedbackEvent")},
                                    "minItems": 1,
                                    "maxItems": MAX_FEEDBACK_EVENTS,
                                },
                            ]
                        },
                        "example": EXAMPLE_FEEDBACK,
                    }
                },
            },
            "responses": {
                "200": _json("FeedbackAnswer", "Recorded (an event posted again is counted as repeated)."),
                "400": _json(
                    "ErrorAnswer", "The body is not valid; `error` names each field and what is wrong."
                ),
                "401": _json("ErrorAnswer", "API_KEY is set and the request does not carry it."),
                "404": _json(
                    "ErrorAnswer",
                    f"A request id was never answered, or longer ago than OUTCOME_RETENTION_S "
                    f"({settings.outcome_retention_s} s): nothing of the body was recorded.",
                ),
                "409": _json("ErrorAnswer", "An event contradicts one recorded before, which stands."),
                "413": too_large,
                "415": _json("ErrorAnswer", "The body is not sent as `application/json`."),
                "429": busy,
                "503": _json("ErrorAnswer", "The prediction log (Redis) did not answer, or is off: retry."),
                "504": too_slow,
            },
            **({"security": api_key} if api_key else {}),
        },
        ("/model", "get"): {
            "tags": [MODEL],
            "summary": "The models this worker serves",
            "responses": {
                "200": {
                    "description": "The champion's name, version, alias, run, features, source, load time, reader "
                    "and scorer; the canary and shadow; refusals; the registry's state; feature drift (the "
                    "sample's rows and PSI per feature).",
                    "content": {
                        "application/json": {"schema": {"type": "object", "additionalProperties": True}}
                    },
                },
                "429": busy,
            },
        },
        ("/admin/reload", "post"): {
            "tags": [ADMIN],
            "summary": "Check the registry's aliases now",
            **({"security": [{"AdminToken": []}]} if settings.admin_token is not None else {}),
            "responses": {
                "200": _json("ReloadAnswer", "Checked, on the worker that received the request."),
                "401": _json("ErrorAnswer", "The bearer token is missing or wrong."),
                "404": _json("ErrorAnswer", "The admin routes are off: ADMIN_TOKEN is not set."),
                "413": too_large,
                "429": busy,
                "504": too_slow,
            },
        },
        ("/livez", "get"): probe | {"summary": "Liveness"},
        ("/healthz", "get"): probe
        | {"summary": "Liveness (the deprecated name of /livez)", "deprecated": True},
        ("/readyz", "get"): {
            "tags": [PROBES],
            "summary": "Readiness: a model loaded and the online store answering",
            "responses": {"200": _text("Ready: an empty line."), "503": _text("Not ready, and why.")},
        },
        ("/metrics", "get"): {
            "tags": [PROBES],
            "summary": "Prometheus metrics",
            "responses": {"200": _text("BentoML's metrics and driver_ranker_*, in Prometheus' text format.")},
        },
    }


def _description(settings: Settings, bento: str | None) -> str:
    """The Swagger page's text: what the service does, the request, the answer, the errors."""
    served_by = f"BentoML {importlib.metadata.version('bentoml')}" + (
        f", from the Bento `{bento}`" if bento else ""
    )
    # BentoML's page hides the title (its own description starts with a heading): this is the title.
    return f"""\
# driver-ranker

The best driver for a trip. A dispatcher posts the ids of the drivers who could take it; the
service reads each driver's latest statistics from the Feast online store (Redis), scores them with
the model version the MLflow registry names `{settings.model_alias}`, and answers with the driver
most likely to complete the trip and the ranking behind it.

**Request** `POST /inference`, a JSON object: `driver_ids`, 1 to {settings.max_driver_ids} integers
(duplicates are scored once), and an optional `request_id`, echoed (generated when absent).
`POST /feedback` later takes `{{"request_id", "driver_id", "completed"}}` (or a list): whether the
trip happened, for the A/B report.

**Answer** `best_driver_id` (null when no driver is scored), `scores` best first,
`unknown_driver_ids` (no features online), `stale_driver_ids` (features older than the feature
view's ttl, 2 days), and the `model` (name, version, alias) that answered. Unknown and stale
drivers are never scored on made-up values.

**Errors** are JSON, `{{"error": "..."}}`, in words a person can act on: 400 a body that is not
valid (the message names the field), 401 without the API key when API_KEY is set (`X-API-Key`, or
`Authorization: Bearer`), 413 a body over {settings.max_body_bytes} bytes, 415 not JSON, 429 over
MAX_CONCURRENCY, 503 the online store did not answer within {settings.feature_read_timeout_s} s
(retry), 504 over REQUEST_TIMEOUT_S. The admin route answers 401 without its token, 404 when off.

From Python: `bentoml.SyncHTTPClient(url).inference(driver_ids=[1001, 1002])` (with API_KEY set,
`SyncHTTPClient(url, token=API_KEY)`). Served by {served_by}."""


def _schemas() -> dict[str, Any]:
    """The models' JSON Schemas, the request's as BentoML validates it, the answers' as written."""
    _, definitions = models_json_schema(
        [(InferenceRequest, "validation"), (InferenceResponse, "serialization"), (ErrorAnswer, "serialization"),
         (ReloadAnswer, "serialization"), (FeedbackEvent, "validation"), (FeedbackAnswer, "serialization")],
        ref_template=REF,
    )  # fmt: skip
    return definitions["$defs"]


def document_version(bento: str | None) -> str:
    """The package's version; in a Bento, where the package is files and not installed, the Bento's."""
    try:
        return importlib.metadata.version("driver-ranker")
    except importlib.metadata.PackageNotFoundError:
        return bento.partition(":")[2] if bento else "dev"


def openapi_document(
    generated: dict[str, Any], settings: Settings, bento: str | None = None
) -> dict[str, Any]:
    """BentoML's document (`Service.openapi_spec.asdict()`) rewritten to describe driver-ranker;
    `bento` is the tag of the Bento serving it, if any.

    Its paths are kept (an operation not in `_operations` keeps what BentoML gave it); the schemas
    become this module's models, as OpenAPI 3.1 (JSON Schema) so that `| None` stays nullable.
    """
    operations = _operations(settings)
    place = {path: i for i, (path, _) in enumerate(operations)}  # the ranking first, the probes last
    paths = {
        path: {
            method: op | operations.get((path, method), {}) for method, op in generated["paths"][path].items()
        }
        for path in sorted(generated["paths"], key=lambda path: place.get(path, len(place)))
    }
    components: dict[str, Any] = {"schemas": _schemas()}
    needed = {
        name
        for item in paths.values()
        for op in item.values()
        for need in op.get("security", [])
        for name in need
    }
    if needed:  # only then: Swagger shows "Authorize" wherever a scheme is declared
        components["securitySchemes"] = {name: SECURITY_SCHEMES[name] for name in sorted(needed)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "driver-ranker",
            "version": document_version(bento),
            "description": _description(settings, bento),
        },
        "servers": generated.get("servers", [{"url": "."}]),
        "tags": TAGS,
        "paths": paths,
        "components": components,
    }
