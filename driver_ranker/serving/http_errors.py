"""The HTTP edge: readable 400s, and the limits and key checked before a body is read.

BentoML answers an invalid body with "1 validation error for <class>"; ValidationErrorMiddleware
puts pydantic's own per-field messages into the `error` a client reads."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driver_ranker.serving.admin import bearer_token, secret_matches


def validation_message(detail: list[dict[str, Any]], shape: str = "a JSON object with driver_ids") -> str:
    """One line per problem, naming the field: `driver_ids[0]: Input should be a valid integer`;
    `shape` says what the body should be."""
    problems = []
    for error in detail:
        if error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({error.get('msg', '')})")
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.get("loc", [])).lstrip(".")
        if not where:
            problems.append(f"the body: {error.get('msg', '')} (send {shape})")
        else:
            problems.append(f"{where}: {error.get('msg', '')}")
    return "; ".join(problems)


class ValidationErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            # The documented error schema: {"error": string}; the per-field messages go in it.
            # A 400 that is not BentoML's validation answer passes on as it was.
            with contextlib.suppress(ValueError, KeyError, TypeError):
                body = json.dumps({"error": validation_message(json.loads(body)["detail"])}).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)


def _reject(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def is_json(content_type: str | None) -> bool:
    """Whether a request's Content-Type is JSON's, or absent (BentoML then reads JSON too)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type in ("", "application/json")


class RequestGuardMiddleware:
    """Refuses, before BentoML reads a body: /inference and /feedback without the API key when
    API_KEY is set (401), bodies over MAX_BODY_BYTES (413, chunked ones too), and /inference and
    /feedback bodies that are not JSON (415; BentoML would parse a form or multipart body, and
    answer the latter with a 500).

    The key is taken from `X-API-Key` or as `Authorization: Bearer <API_KEY>`, which is what
    BentoML's own clients send (`bentoml.SyncHTTPClient(url, token=...)`)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: SecretStr | None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        inference = scope["path"] in ("/inference", "/feedback")  # the client API
        if inference and self.api_key is not None:
            presented = headers.get("x-api-key") or bearer_token(headers.get("authorization"))
            if not secret_matches(self.api_key, presented):
                message = "send the API key in the X-API-Key header (or as Authorization: Bearer <key>)"
                await _reject(401, message)(scope, receive, send)
                return
        if inference and scope["method"] == "POST" and not is_json(headers.get("content-type")):
            await _reject(415, "send the body as JSON, with Content-Type: application/json")(
                scope, receive, send
            )
            return
        too_large = _reject(413, f"the body is larger than {self.max_body_bytes} bytes")
        declared = headers.get("content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): read up to the limit here, then hand the body on. An
        # exception from `receive` would reach BentoML's handler and come out as a 500.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
