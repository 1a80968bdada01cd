"""Replicas of the ranker behind HAProxy, as local processes: `make stack REPLICAS=n`, the replica
tests (tests/integration/test_replicas.py) and `make bench-replicas` all start them here.

Each replica is a `bentoml serve` on a loopback port and with a BENTOML_HOME of its own: BentoML
empties $BENTOML_HOME/prometheus_multiproc_dir when a server starts, so replicas sharing a home
would wipe each other's metrics (and their workers' connection shares, serving/keepalive.py).
HAProxy runs compose's own config, deployment/haproxy.cfg, with its listening addresses and its
servers rewritten for loopback (`render_config`): the process topology proves compose's settings.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from driver_ranker.config import PROJECT_ROOT
from driver_ranker.ops.processes import free_port, kill_tree, serve_until_ready, stop_process_group, wait_for

HAPROXY_CONFIG = PROJECT_ROOT / "deployment" / "haproxy.cfg"
BACKEND = "rankers"
"""The backend section of the rankers in deployment/haproxy.cfg."""
TARGET = "service:DriverRanker"


def haproxy_binary() -> str:
    """The `haproxy` executable; fails saying how to install it."""
    # Debian installs it in /usr/sbin, which is not on an ordinary user's PATH.
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            "replicas need HAProxy in front of them and `haproxy` is not installed: "
            "`sudo apt-get install haproxy` (Debian, Ubuntu), `brew install haproxy` (macOS); "
            "`make stack` installs it itself when run as root"
        )
    return found


def _replace_once(text: str, pattern: str, replacement: str) -> str:
    """`pattern` (a whole line, re.M) replaced; fails when deployment/haproxy.cfg has no such line,
    so an edit there that the rewriting no longer matches is found at once, not at the first request."""
    result, count = re.subn(pattern, lambda _: replacement, text, flags=re.M)
    if count != 1:
        raise ValueError(f"{HAPROXY_CONFIG.name}: expected one line matching {pattern!r}, found {count}")
    return result


def render_config(port: int, stats_port: int, servers: Mapping[str, int], template: str | None = None) -> str:
    """deployment/haproxy.cfg for replicas on loopback: the API on `port`, the stats page on
    `stats_port`, one `server` per replica (name -> port) instead of Docker's DNS."""
    text = HAPROXY_CONFIG.read_text() if template is None else template
    text = _replace_once(text, r"^    bind :3000$", f"    bind 127.0.0.1:{port}")
    text = _replace_once(text, r"^    bind 127\.0\.0\.1:8404$", f"    bind 127.0.0.1:{stats_port}")
    lines = "\n".join(f"    server {name} 127.0.0.1:{p} check" for name, p in servers.items())
    text = _replace_once(text, r"^    server-template .*$", lines)
    # The resolvers section (to the end of its indented lines) would query 127.0.0.11, which is
    # Docker's DNS inside a container and nothing here.
    return _replace_once(text, r"^resolvers docker\n(?:[ \t]+.*\n|\n)*", "")


@dataclass
class Replica:
    """One `bentoml serve` of the ranker; `proc` is None while it is stopped."""

    name: str
    """Its server name in HAProxy's config and stats."""
    port: int
    home: Path
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Replicas:
    """`count` replicas of `workers` workers each (None: WORKERS as `env` says), under `folder`.

    `model_store`: a BentoML model store each replica's home links to, so that the fallback to the
    model a Bento carries (serving/lifecycle.py) finds what `make bento` imported; None leaves each
    home's store empty.
    """

    count: int
    env: Mapping[str, str]
    folder: Path
    workers: int | None = None
    model_store: Path | None = None
    members: list[Replica] = field(init=False)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.members = [
            Replica(
                f"ranker{i}", free_port(), self.folder / f"ranker{i}-bentoml", self.folder / f"ranker{i}.log"
            )
            for i in range(1, self.count + 1)
        ]

    def start(self, replica: Replica, ready_timeout: float = 120) -> None:
        """Starts the replica on its port (the one HAProxy's config names; a restart keeps it) and
        returns once its /readyz says 200."""
        replica.home.mkdir(parents=True, exist_ok=True)
        models = replica.home / "models"
        if self.model_store is not None and self.model_store.is_dir() and not models.exists():
            models.symlink_to(self.model_store.resolve(), target_is_directory=True)
        workers = {"WORKERS": str(self.workers)} if self.workers else {}
        env = {**self.env, **workers, "BENTOML_HOME": str(replica.home), "PORT": str(replica.port)}
        # Loopback only: clients go through HAProxy, which retries and health-checks.
        replica.proc = serve_until_ready(
            TARGET, replica.port, env, replica.log, ready_timeout, host="127.0.0.1"
        )

    def start_all(self, ready_timeout: float = 180) -> None:
        """All at once: most of a start is imports and loading the model, which overlap well."""
        with ThreadPoolExecutor(len(self.members)) as pool:
            for started in [pool.submit(self.start, r, ready_timeout) for r in self.members]:
                started.result()

    def stop(self, replica: Replica, grace_s: float = 30) -> float:
        """SIGTERM to the server process only, as `docker stop` sends it to a container's first
        process: BentoML's arbiter has its workers finish the requests they accepted, then exits.
        Returns the seconds it took to exit (after `grace_s`, it and its workers are killed)."""
        proc, replica.proc = replica.proc, None
        if proc is None:
            return 0.0
        started = time.monotonic()
        with suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        finally:
            stop_process_group(proc, grace_s=1)  # workers left behind, if any
        return time.monotonic() - started

    def kill(self, replica: Replica) -> None:
        """SIGKILL to the server and its workers at once, as the OOM killer or a lost host would."""
        proc, replica.proc = replica.proc, None
        if proc is not None:
            kill_tree(proc)

    def stop_all(self) -> None:
        for replica in self.members:
            if replica.proc is not None:
                stop_process_group(replica.proc)
                replica.proc = None


@dataclass
class Balancer:
    """A running HAProxy: the API at `url`, its stats page at `stats_url`."""

    port: int
    stats_port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats_url(self) -> str:
        return f"http://127.0.0.1:{self.stats_port}/stats"

    def stats(self) -> list[dict[str, str]]:
        """The rankers backend's rows of HAProxy's stats (one per server, then BACKEND itself)."""
        text = httpx.get(f"{self.stats_url};csv", timeout=2).text.lstrip("# ")
        return [row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == BACKEND]

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: UP, DOWN, `UP 1/2` (rising), `MAINT`, ..."""
        return {row["svname"]: row["status"] for row in self.stats() if row["svname"] != "BACKEND"}

    def totals(self) -> dict[str, int]:
        """Over the backend: requests retried (`wretr`) and sent to another server (`wredis`)."""
        (row,) = [row for row in self.stats() if row["svname"] == "BACKEND"]
        return {"retried": int(row["wretr"] or 0), "redispatched": int(row["wredis"] or 0)}

    def _state(self, name: str) -> str | None:
        try:
            return self.states().get(name)
        except httpx.HTTPError:  # not listening yet
            return None

    def wait_until(self, name: str, state: str, timeout: float = 30) -> float:
        """Seconds until server `name` is in `state` (exactly: `UP` is not `UP 1/2`)."""
        return wait_for(
            lambda: self._state(name) == state,
            timeout,
            f"HAProxy's {name} is {state}",
            proc=self.proc,
            log_path=self.log,
        )


@contextmanager
def load_balancer(
    servers: Mapping[str, int], port: int, folder: Path, ready_timeout: float = 30
) -> Iterator[Balancer]:
    """HAProxy on `port` in front of `servers` (name -> loopback port), once it says every one is
    UP; stopped at the end."""
    binary = haproxy_binary()
    folder.mkdir(parents=True, exist_ok=True)
    config, log = folder / "haproxy.cfg", folder / "haproxy.log"
    stats_port = free_port()
    config.write_text(render_config(port, stats_port, servers))
    checked = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"haproxy refuses {config}:\n{checked.stdout}{checked.stderr}")
    with open(log, "wb") as out:
        # -db: in the foreground, logging to stdout (the file); its own session, as the replicas.
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    balancer = Balancer(port, stats_port, proc, log)
    try:
        deadline = time.monotonic() + ready_timeout
        for name in servers:
            balancer.wait_until(name, "UP", max(0.1, deadline - time.monotonic()))
        yield balancer
    finally:
        stop_process_group(proc, grace_s=5)


@contextmanager
def balanced_replicas(
    count: int,
    env: Mapping[str, str],
    folder: Path,
    port: int,
    workers: int | None = None,
    model_store: Path | None = None,
) -> Iterator[tuple[Replicas, Balancer]]:
    """`count` replicas started together, then HAProxy on `port` in front of them, every replica UP.
    Everything is stopped at the end, HAProxy first."""
    haproxy_binary()  # before minutes of starting replicas for nothing
    replicas = Replicas(count, env, folder, workers, model_store)
    try:
        replicas.start_all()
        with load_balancer({r.name: r.port for r in replicas.members}, port, folder) as balancer:
            yield replicas, balancer
    finally:
        replicas.stop_all()
