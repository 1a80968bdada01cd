"""Reading the Grafana dashboard (deployment/grafana/dashboards/driver-ranker.json) as Grafana does:
its panels, their queries, and the queries with Grafana's variables filled in."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

from driver_ranker.config import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deployment" / "grafana" / "dashboards" / "driver-ranker.json"
# $name, ${name}, ${name:format} and the deprecated [[name]].
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict) -> Iterator[dict]:
    """Every panel, including those inside collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(board: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every panel target."""
    return [
        (panel["title"], target["refId"], target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` as Grafana sends it to Prometheus; a variable missing from `values` raises KeyError."""

    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return VARIABLE.sub(value, expr)


def grafana_regex(values: list[str]) -> str:
    """A multi-value variable as Grafana formats it for a Prometheus `=~`: the values regex-escaped
    (backslashes doubled, inside PromQL's double-quoted string) between parentheses, `|`-separated."""
    return "(" + "|".join(re.escape(value).replace("\\", "\\\\") for value in values) + ")"
