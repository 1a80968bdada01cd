"""Logging of the package inside a BentoML worker: one line per event, beside BentoML's own."""

from __future__ import annotations

import logging


def configure_logging(level: int = logging.INFO) -> None:
    """Gives the `driver_ranker` loggers a handler (BentoML configures only its own); idempotent."""
    package = logging.getLogger("driver_ranker")
    if package.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] [%(name)s] %(message)s"))
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
