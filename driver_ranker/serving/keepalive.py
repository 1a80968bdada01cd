"""Persistent clients spread over the workers.

Every worker accepts from one shared listening socket, and whichever is awake when a burst of
connections arrives takes most of them; with keep-alive they stay there, and one worker works while
the other idles. The edge answers `Connection: close` when `ConnectionRecycler` says so, and the
client reconnects to whichever worker accepts first:
- on a connection that has served KEEPALIVE_MAX_REQUESTS requests or is KEEPALIVE_MAX_AGE_S old (as
  Envoy's max_requests_per_connection and nginx's keepalive_requests / keepalive_time do), the age
  drawn per connection between 80% and 100% of it so that connections opened together do not all
  reconnect together (gRPC jitters MAX_CONNECTION_AGE the same way). Each reconnection lands at
  random, so ages are long (30 s): at 5 s, 16 connections were redrawn 3 times a second and the
  split wandered to 11/5 at times;
- on a worker holding more than its fair share of the busy connections: each worker writes how many
  it holds to a file of its own beside BentoML's Prometheus files, twice a second, and reads the
  others'. Only a worker above the fair share closes any, so the split converges instead of being
  drawn again at random.
A reconnection on a local network costs a TCP handshake, a fraction of a millisecond.
"""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

from driver_ranker import metrics

BUSY_S = 1.0
"""A connection that sent a request this recently counts as busy."""
SHARE_INTERVAL_S = 0.5
"""How often a worker publishes its busy connections and reads the other workers'."""


class WorkerShares:
    """Busy connections per worker, through one small file per worker in a directory the server's
    workers share; dead workers' files are ignored."""

    def __init__(self, directory: Path, workers: int) -> None:
        self.directory = directory
        self.workers = workers

    def exchange(self, mine: int) -> int:
        """Publishes this worker's busy connections; returns the most a worker should hold (a
        worker that has not published yet, having had no request, holds none)."""
        own = self.directory / f"connections_{os.getpid()}"
        temporary = own.with_suffix(".tmp")
        temporary.write_text(str(mine))
        temporary.replace(own)
        counts = []
        for path in self.directory.glob("connections_*"):
            pid = path.name.removeprefix("connections_")
            if pid.isdigit() and metrics.process_alive(int(pid)):
                try:
                    counts.append(int(path.read_text() or 0))
                except (OSError, ValueError):  # being replaced right now: next time
                    continue
        return math.ceil(sum(counts) / max(self.workers, len(counts)))


class ConnectionRecycler:
    """Says which request is to be its connection's last (the edge then answers `Connection: close`)."""

    def __init__(self, max_requests: int, max_age_s: float, workers: int) -> None:
        self.max_requests = max_requests
        self.max_age_s = max_age_s
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # per server: BentoML's workers share it
        self._shares = WorkerShares(Path(shared), workers) if shared and workers > 1 else None
        self._shared_at = 0.0
        self._excess = 0
        """Connections still to close, this interval, to come down to the fair share."""
        # Client address (host, port) of each open connection -> [first request's time, requests,
        # latest request's time, its age limit]. ASGI says nothing when a connection closes: entries idle for
        # max_age_s are pruned (a connection that comes back after that starts a new count).
        self._connections: dict[tuple, list] = {}
        self._pruned_at = time.monotonic()

    def last_request(self, client: tuple) -> bool:
        """Counts a request on the client's connection; true when it is to be the last one."""
        now = time.monotonic()
        seen = self._connections.get(client)
        if seen is None:
            seen = self._connections[client] = [now, 0, now, self.max_age_s * random.uniform(0.8, 1.0)]
        seen[1] += 1
        seen[2] = now
        if seen[1] >= self.max_requests:
            last = "requests"
        elif now - seen[0] >= seen[3]:
            last = "age"
        elif self._over_share(now):
            last = "share"
        else:
            last = None
        if last:
            metrics.CONNECTIONS_CLOSED.labels(reason=last).inc()
            del self._connections[client]
        if now - self._pruned_at > self.max_age_s:
            self._pruned_at = now
            self._connections = {k: v for k, v in self._connections.items() if now - v[2] < self.max_age_s}
        return last is not None

    def _over_share(self, now: float) -> bool:
        """Whether this worker closes the connection to come down to its fair share of the busy
        ones (those that sent a request within BUSY_S)."""
        if self._shares is None:
            return False
        if now - self._shared_at >= SHARE_INTERVAL_S:
            self._shared_at = now
            busy = sum(1 for _, _, latest, _ in self._connections.values() if now - latest < BUSY_S)
            self._excess = max(0, busy - self._shares.exchange(busy))
        if self._excess > 0:
            self._excess -= 1
            return True
        return False
