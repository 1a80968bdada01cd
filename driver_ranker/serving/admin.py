"""Who may call what: the admin bearer token and the optional API key, compared in constant time."""

from __future__ import annotations

import hmac

from pydantic import SecretStr

from driver_ranker.config import Settings


class AdminDenied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def authorize(settings: Settings, authorization: str | None) -> None:
    """Raises AdminDenied (404 when the admin routes are off, 401 without the right token)."""
    if settings.admin_token is None:
        raise AdminDenied(404, "admin routes are off: set ADMIN_TOKEN to turn them on")
    if not secret_matches(settings.admin_token, bearer_token(authorization)):
        raise AdminDenied(401, "send Authorization: Bearer <ADMIN_TOKEN>")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any letter case), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def secret_matches(expected: SecretStr, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(
        presented.encode(), expected.get_secret_value().encode()
    )
