"""docs/dashboard.png: a few of the Grafana dashboard's queries on a real run, drawn by Prometheus's
own graph page in headless Chromium (Grafana needs a container or a package this tooling does not
assume).

A redis-server of its own, demo data and a champion in a temporary folder, the ranker (2 workers,
drift on) under paced load that steps up and down, a few malformed requests, and Redis frozen for
a few seconds (503s, and the latency they cost); a real Prometheus scrapes it every second. The
queries are the dashboard's panels, read from its JSON, with Grafana's variables filled in.

    .venv/bin/python -m bench.dashboard_screenshot [--output docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.jobs.data import FIRST_DRIVER_ID, DataSpec
from driver_ranker.jobs.training import train
from tests.support.dashboard import dashboard, panels, substitute
from tests.support.prometheus import prometheus_server
from tests.support.stack import make_feast_repo, ranker_server, redis_server, repo_settings

logger = logging.getLogger(__name__)

# (panel title, refId): what the picture shows, top to bottom.
SHOWN = [("Inference requests by outcome", "A"), ("/inference latency percentiles", "C")]
RATE_WINDOW = "15s"  # $__rate_interval for 1 s scrapes, short enough to show the steps
# (seconds, requests per second): the load's shape; Redis is frozen during FROZEN.
PHASES = [(40, 15), (40, 40), (40, 25)]
FROZEN = (95, 100)
# Tall enough for both graphs (about 700 px each): the page scrolls to the last query's box when
# it is out of view, cutting the first graph off.
WINDOW = "1440,1560"  # wide enough for the latency query on one line
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # The graph page draws after its queries answer: let the page's own clock run that long.
    "--virtual-time-budget=15000",
]


def shown_queries() -> list[str]:
    """The chosen panels' queries as Grafana sends them with every replica selected; the replica
    filter (`instance=~".*"`, a no-op) is dropped so the page shows the query's substance."""
    targets = {
        (panel["title"], target["refId"]): target["expr"]
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
    }
    queries = []
    for key in SHOWN:
        expr = re.sub(r',?\s*instance=~"\$instance"', "", targets[key]).replace("{}", "")
        queries.append(" ".join(substitute(expr, {"__rate_interval": RATE_WINDOW}).split()))
    return queries


def bodies(rng: np.random.Generator) -> list[dict | str]:
    """Requests of 5 to 50 demo drivers with an unknown one now and then, and a malformed one (400)."""
    out: list[dict | str] = []
    for i in range(200):
        size = int(rng.integers(5, 51))
        ids = rng.choice(np.arange(FIRST_DRIVER_ID, FIRST_DRIVER_ID + 1000), size, replace=False).tolist()
        out.append({"driver_ids": ids + ([999_999] if i % 4 == 0 else [])})
    out[::50] = ["{driver_ids: [1001"] * len(out[::50])
    return out


def paced_load(url: str, stop: threading.Event, statuses: list[int]) -> None:
    """Requests at each phase's rate, open loop (a slow answer does not slow the sender)."""
    rng = np.random.default_rng(18)
    requests = bodies(rng)
    started = time.monotonic()
    sent = 0

    def post(http: httpx.Client, body: dict | str) -> None:
        try:
            if isinstance(body, str):
                answer = http.post("/inference", content=body, headers={"content-type": "application/json"})
            else:
                answer = http.post("/inference", json=body)
            statuses.append(answer.status_code)
        except httpx.HTTPError:
            statuses.append(-1)

    with httpx.Client(base_url=url, timeout=5, limits=httpx.Limits(max_connections=16)) as http:
        threads: list[threading.Thread] = []
        while not stop.is_set():
            elapsed = time.monotonic() - started
            rate = next((r for end, r in cumulative(PHASES) if elapsed < end), PHASES[-1][1])
            thread = threading.Thread(target=post, args=(http, requests[sent % len(requests)]))
            thread.start()
            threads.append(thread)
            sent += 1
            time.sleep(1 / rate)
            threads = [t for t in threads if t.is_alive()]
        for thread in threads:
            thread.join()


def cumulative(phases: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(end second, rate) of each phase."""
    out, end = [], 0
    for seconds, rate in phases:
        end += seconds
        out.append((end, rate))
    return out


def screenshot(page: str, output: Path, window: str = WINDOW) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is missing: `apt-get install chromium` (Debian)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    try:
        subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={output}",
             f"--window-size={window}", page],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def graph_page(prometheus_url: str, queries: list[str], range_s: int) -> str:
    params: dict[str, str] = {}
    for i, expr in enumerate(queries):
        params |= {f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.range_input": f"{range_s}s"}
        params |= {f"g{i}.stacked": "0", f"g{i}.show_exemplars": "0"}
    return f"{prometheus_url}/graph?{urlencode(params)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    queries = shown_queries()  # before anything starts: a renamed panel fails here
    root = Path(tempfile.mkdtemp(prefix="dashboard-"))
    try:
        with redis_server() as (redis_proc, redis_address):
            repo = make_feast_repo(root, DataSpec(), redis=redis_address)
            settings = repo_settings(repo, redis=redis_address)
            logger.info("training a champion on demo data")
            train(settings)
            drift = {"DRIFT_CHECK_INTERVAL_S": "1", "DRIFT_MIN_ROWS": "200"}
            with (
                ranker_server(settings, workers=2, extra_env=drift) as url,
                prometheus_server([url.removeprefix("http://")]) as prometheus,
            ):
                prometheus.wait_until_up()
                stop, statuses = threading.Event(), []
                loader = threading.Thread(target=paced_load, args=(url, stop, statuses))
                started = time.monotonic()
                loader.start()
                time.sleep(FROZEN[0])
                logger.info("freezing Redis for %d s", FROZEN[1] - FROZEN[0])
                redis_proc.send_signal(signal.SIGSTOP)
                time.sleep(FROZEN[1] - FROZEN[0])
                redis_proc.send_signal(signal.SIGCONT)
                time.sleep(max(0.0, sum(s for s, _ in PHASES) - (time.monotonic() - started)))
                stop.set()
                loader.join()
                time.sleep(3)  # the last scrapes
                counts = {s: statuses.count(s) for s in sorted(set(statuses))}
                logger.info("%d requests, by status %s", len(statuses), counts)
                for expr in queries:
                    logger.info("%s\n  -> %s", expr, prometheus.query(expr))
                page = graph_page(prometheus.url, queries, int(time.monotonic() - started) + 10)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                screenshot(page, args.output)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    logger.info("wrote %s (%d kB)", args.output, args.output.stat().st_size // 1024)


if __name__ == "__main__":
    main()
