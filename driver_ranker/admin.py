"""Who may call /admin/*: a bearer token compared in constant time; no token configured, no routes."""

from __future__ import annotations

import hmac

from driver_ranker.config import Settings


class AdminDenied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def authorize(settings: Settings, authorization: str | None) -> None:
    """Raises AdminDenied (404 when the admin routes are off, 401 without the right token)."""
    if settings.admin_token is None:
        raise AdminDenied(404, "admin routes are off: set ADMIN_TOKEN to turn them on")
    scheme, _, token = (authorization or "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AdminDenied(401, "send Authorization: Bearer <ADMIN_TOKEN>")
