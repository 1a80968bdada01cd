"""The HTTP edge: the one ASGI middleware in front of BentoML's app, doing in one pass what every
request needs around its handler.

- Refuses before a body is read: /inference and /feedback without the API key when API_KEY is set
  (401), bodies over MAX_BODY_BYTES (413, chunked ones too), /inference and /feedback bodies that
  are not JSON (415; BentoML would parse a form or multipart body, and answer the latter with a 500).
- Answers `Connection: close` when keepalive.py says the client's connection is to be recycled.
- Writes the request's one JSON log line (request_log.py).
- Answers the JSON APIs it is given (POST /inference) itself: the body validated by the API's own
  input model, the API's own function called, its output written as JSON, errors as BentoML's
  handler answers them (400 with per-field messages, 500 for an unexpected one). BentoML's handler
  does the same after its router and request context, through its serde and IO model, and rebuilds
  the method's `inspect.signature` on every call: answering here gave one worker 1.31x the
  requests/s of 5 drivers, side by side (README, Performance). BentoML's metrics, tracing, timeout and concurrency limit stay around this
  middleware; the API's declaration (its OpenAPI entry, `/schema.json`, BentoML's clients) stays
  BentoML's.

It was four middlewares, each wrapping `send` once more: 0.23 ms of a 1.36 ms request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from driver_ranker.serving.admin import bearer_token, secret_matches
from driver_ranker.serving.http_errors import is_json, validation_message
from driver_ranker.serving.keepalive import ConnectionRecycler
from driver_ranker.serving.request_log import SKIP_PATHS, collecting_fields, write_line

logger = logging.getLogger(__name__)

CLIENT_API = ("/inference", "/feedback")
"""The paths that need the API key and a JSON body."""
UNEXPECTED = "An unexpected error has occurred, please check the server log."
"""BentoML's answer to an exception in a handler, kept for the APIs the edge answers."""


class JsonApi:
    """An API the edge answers: `call(**fields of the validated body)` -> a pydantic model or a
    Starlette Response."""

    def __init__(self, input_model: type[BaseModel], call: Callable[..., Any]) -> None:
        self.input_model = input_model
        self.fields = tuple(input_model.model_fields)
        self.call = call


def _reject(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


class HttpEdge:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        api_key: SecretStr | None,
        recycler: Callable[[], ConnectionRecycler] | None = None,
        apis: Mapping[str, Callable[[], JsonApi]] | None = None,
        server: str = "driver-ranker",
    ) -> None:
        """`recycler` is built here, in the worker (BentoML builds its app there); `apis`: POST path ->
        how to get the API answered there, asked at its first request (the service instance exists
        only once the worker has started)."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        self.recycler = recycler() if recycler is not None else None
        self._api_factories = dict(apis or {})
        self._apis: dict[str, JsonApi] = {}
        self._server_header = (b"server", server.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        client = scope.get("client")
        close = bool(client) and self.recycler is not None and self.recycler.last_request(tuple(client))
        line: dict[str, Any] = {"method": scope["method"], "path": path, "status": 0}

        async def respond(message: Message) -> None:
            if message["type"] == "http.response.start":
                line["status"] = message["status"]
                if close:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        with collecting_fields() as fields:
            try:
                await self._handle(scope, receive, respond)
            finally:
                if path not in SKIP_PATHS:
                    line.update(fields)
                    line["latency_ms"] = round((time.perf_counter() - started) * 1e3, 3)
                    write_line(line)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        path = scope["path"]
        client_api = path in CLIENT_API
        if client_api and self.api_key is not None:
            presented = headers.get("x-api-key") or bearer_token(headers.get("authorization"))
            if not secret_matches(self.api_key, presented):
                message = "send the API key in the X-API-Key header (or as Authorization: Bearer <key>)"
                await _reject(401, message)(scope, receive, send)
                return
        post = scope["method"] == "POST"
        if client_api and post and not is_json(headers.get("content-type")):
            await _reject(415, "send the body as JSON, with Content-Type: application/json")(
                scope, receive, send
            )
            return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        api = self._api(path) if post else None
        if api is None and declared is not None:
            await self.app(scope, receive, send)
            return
        # The body read here, up to the limit: for the API answered here, or (chunked, with no
        # Content-Length) to be handed on. An exception from `receive` inside BentoML's handler
        # would come out as a 500.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        if api is not None:
            if message["type"] == "http.request":  # else the client went away: nobody to answer
                await self._answer(api, b"".join(m.get("body", b"") for m in messages), scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    def _too_large(self, scope: Scope, receive: Receive, send: Send) -> Any:
        return _reject(413, f"the body is larger than {self.max_body_bytes} bytes")(scope, receive, send)

    def _api(self, path: str) -> JsonApi | None:
        api = self._apis.get(path)
        if api is None and path in self._api_factories:
            api = self._apis[path] = self._api_factories[path]()
        return api

    async def _answer(self, api: JsonApi, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            payload = api.input_model.model_validate_json(body or b"{}")
        except ValidationError as exc:
            detail = exc.errors(include_context=False, include_input=False, include_url=False)
            await _reject(400, validation_message(detail))(scope, receive, send)
            return
        try:
            output = await api.call(**{name: getattr(payload, name) for name in api.fields})
        except Exception:
            logger.exception("%s %s failed", scope["method"], scope["path"])
            await _reject(500, UNEXPECTED)(scope, receive, send)
            return
        if isinstance(output, Response):
            output.raw_headers.append(self._server_header)
            await output(scope, receive, send)
            return
        content = output.model_dump_json().encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            self._server_header,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def json_api(service: Any, name: str) -> Callable[[], JsonApi]:
    """The BentoML API `name` of the service class, bound to the running service instance: its
    input model is the one BentoML validates with, its function the one BentoML would call."""
    import bentoml

    method = service.apis[name]

    def bind() -> JsonApi:
        instance = bentoml.get_current_service()
        return JsonApi(method.input_spec, lambda **fields: method.func(instance, **fields))

    return bind
