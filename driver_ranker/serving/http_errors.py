"""Readable 400s: pydantic's own per-field messages in the `error` a client reads (BentoML would
say "1 validation error for <class>"), and what counts as a JSON body."""

from __future__ import annotations

from typing import Any


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


def is_json(content_type: str | None) -> bool:
    """Whether a request's Content-Type is JSON's, or absent (BentoML then reads JSON too)."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type in ("", "application/json")
