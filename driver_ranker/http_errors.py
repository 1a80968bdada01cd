"""Readable 400s: BentoML answers an invalid body with "1 validation error for <class>"; this
middleware puts pydantic's own per-field messages into the `error` a client reads."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def validation_message(detail: list[dict[str, Any]]) -> str:
    """One line per problem, naming the field: `driver_ids[0]: Input should be a valid integer`."""
    problems = []
    for error in detail:
        if error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({error.get('msg', '')})")
            continue
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.get("loc", [])).lstrip(".")
        if not where:
            problems.append(f"the body: {error.get('msg', '')} (send a JSON object with driver_ids)")
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
            try:
                payload = json.loads(body)
                payload["error"] = validation_message(payload["detail"])
                body = json.dumps(payload).encode()
            except (ValueError, KeyError, TypeError):
                pass  # not BentoML's validation answer: pass it on as it was
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
