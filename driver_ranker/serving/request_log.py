"""One JSON log line per request, in place of BentoML's access log.

BentoML's access log wrote a second line for every answer beside the ranker's own and, with the
OpenTelemetry span BentoML opens for it, cost as much time as the whole ranking (see README,
Performance). This middleware writes the only line: method, path, status and time for every
request, plus what the handler adds with `annotate` (the ranker: request id, model version, best
driver, drivers, unknown, stale). Health checks and /metrics are not logged, as in BentoML.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("driver_ranker.requests")

SKIP_PATHS = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})
"""BentoML's access log skipped these too: probes and scrapes would drown the requests."""

_fields: ContextVar[dict[str, Any] | None] = ContextVar("request_log_fields", default=None)


def annotate(**fields: Any) -> None:
    """Adds fields to the log line of the request being served (no-op outside a request)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in SKIP_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        line: dict[str, Any] = {"method": scope["method"], "path": scope["path"], "status": 0}
        fields: dict[str, Any] = {}
        token = _fields.set(fields)

        async def send_noting_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                line["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            _fields.reset(token)
            line.update(fields)
            line["latency_ms"] = round((time.perf_counter() - started) * 1e3, 3)
            logger.info(json.dumps(line))
