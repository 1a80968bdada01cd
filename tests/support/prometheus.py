"""A real Prometheus server for tests and tooling: scrapes the given targets every second on a free
loopback port, with its own config and storage in a temporary folder removed at the end."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from driver_ranker.ops.processes import free_port, stop_process_group, wait_for, wait_until_ready

DEBIAN_BINARY = Path("/usr/bin/prometheus")


class QueryError(AssertionError):
    """Prometheus refused a query (it does not parse, or cannot be evaluated)."""


def prometheus_binary() -> str:
    """The `prometheus` server binary; fails the test, saying how to install it, when there is none.

    CI installs Debian's `prometheus` package (.ci/run) for promtool, which brings the server too, so
    a missing binary is a broken machine, not a reason to skip: tests/deployment/test_alerts.py
    treats promtool the same way.
    """
    found = shutil.which("prometheus") or (str(DEBIAN_BINARY) if DEBIAN_BINARY.exists() else None)
    if found is None:
        pytest.fail(
            "prometheus is missing: `apt-get install prometheus` (Debian) or a Prometheus release's tarball"
        )
    return found


class Prometheus:
    """A running server's HTTP API, as Grafana and an on-call engineer use it."""

    def __init__(self, url: str, log_path: Path) -> None:
        self.url = url
        self.log_path = log_path
        self._http = httpx.Client(base_url=url, timeout=10)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: dict | list | None = None) -> dict:
        response = self._http.get(path, params=params)
        try:
            body = response.json()
        except ValueError:
            body = {"status": "error", "error": response.text[:500]}
        if response.status_code != 200 or body.get("status") != "success":
            raise QueryError(f"GET {path} {params}: HTTP {response.status_code}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """The instant vector `expr` evaluates to (now, or at epoch seconds `at`): one dict per series,
        {"metric": labels, "value": [time, "value"]}. Raises QueryError if Prometheus refuses it."""
        params = {"query": expr} | ({"time": str(at)} if at is not None else {})
        data = self._get("/api/v1/query", params)
        if data["resultType"] != "vector":  # a scalar or string: no series to show
            raise QueryError(f"{expr!r} is a {data['resultType']}, not an instant vector")
        return data["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        """The values `label` takes in series matching the selector `match` (Grafana's label_values)."""
        return self._get(f"/api/v1/label/{label}/values", [("match[]", match)])

    def alerts(self) -> list[dict]:
        """Alerts pending or firing now, from the loaded rule files."""
        return self._get("/api/v1/alerts")["alerts"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets")["activeTargets"]

    def wait_until_up(self, within: float = 30) -> None:
        """Until every target's last scrape succeeded."""

        def all_up() -> bool:
            targets = self.targets()
            return bool(targets) and all(t["health"] == "up" for t in targets)

        self._wait(all_up, within, "every target up")

    def wait_for_scrapes(self, count: int, within: float = 30) -> None:
        """Until every target was scraped successfully at least `count` times (rates need two)."""
        expr = "min(sum_over_time(up[1h])) or vector(0)"  # up is 1 per successful scrape, 0 per failed
        self._wait(lambda: float(self.query(expr)[0]["value"][1]) >= count, within, f"{count} scrapes")

    def _wait(self, condition: Callable[[], object], within: float, what: str) -> None:
        try:
            wait_for(condition, within, f"Prometheus: {what}", poll_s=0.2)
        except TimeoutError as exc:
            targets = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in self.targets()]
            raise TimeoutError(f"{exc}; targets {targets}\n{self.log_tail()}") from None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def write_config(folder: Path, targets: Sequence[str], job: str, rule_files: Sequence[Path]) -> Path:
    config = {
        # Every second, so a test sees rates after a few seconds of load.
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]}
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def prometheus_server(
    targets: Sequence[str],
    job: str = "driver-ranker",
    rule_files: Sequence[Path] = (),
    ready_timeout: float = 30,
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` ("host:port", /metrics) as job `job` (compose's job name by
    default, so the alert rules' selectors match), with `rule_files` loaded; stopped and its folder
    removed at the end."""
    binary = prometheus_binary()
    folder = Path(tempfile.mkdtemp(prefix="prometheus-"))
    port = free_port()
    log_path = folder / "prometheus.log"
    config = write_config(folder, targets, job, rule_files)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                # Debian's default listens on every interface; a test's server stays on loopback.
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_ready(proc, f"{server.url}/-/ready", "prometheus", log_path, ready_timeout, poll_s=0.1)
        yield server
    finally:
        server.close()
        stop_process_group(proc, grace_s=10)
        shutil.rmtree(folder, ignore_errors=True)
