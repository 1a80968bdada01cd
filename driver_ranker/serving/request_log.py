"""One JSON log line per request, in place of BentoML's access log.

BentoML's access log wrote a second line for every answer beside the ranker's own and, with the
OpenTelemetry span BentoML opens for it, cost as much time as the whole ranking (see README,
Performance). The edge (edge.py) writes the only line: method, path, status and time for every
request, plus what the handler adds with `annotate` (the ranker: request id, model version, best
driver, drivers, unknown, stale). Health checks and /metrics are not logged, as in BentoML.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

logger = logging.getLogger("driver_ranker.requests")

SKIP_PATHS = frozenset({"/metrics", "/healthz", "/livez", "/readyz"})
"""BentoML's access log skipped these too: probes and scrapes would drown the requests."""

_fields: ContextVar[dict[str, Any] | None] = ContextVar("request_log_fields", default=None)


def annotate(**fields: Any) -> None:
    """Adds fields to the log line of the request being served (no-op outside a request)."""
    current = _fields.get()
    if current is not None:
        current.update(fields)


@contextmanager
def collecting_fields() -> Iterator[dict[str, Any]]:
    """The fields `annotate` adds while a request is served (in this context)."""
    fields: dict[str, Any] = {}
    token = _fields.set(fields)
    try:
        yield fields
    finally:
        _fields.reset(token)


def write_line(line: dict[str, Any]) -> None:
    logger.info(json.dumps(line))
