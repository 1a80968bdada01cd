"""How a server's established connections are spread over its worker processes, as the kernel sees
them (`ss`): which worker accepted each connection is what sets the load each worker gets."""

from __future__ import annotations

import re
import statistics
import subprocess
import threading
from collections import Counter


def connection_split(port: int) -> Counter:
    """Established connections to `port`, per owning process id."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
    ).stdout
    return Counter(re.findall(r"pid=(\d+)", out))


def busier_share(counts: Counter, workers: int) -> float:
    """Share of the connections held by the busiest worker (1/workers: even)."""
    total = sum(counts.values())
    return max(counts.values()) / total if total else 1 / workers


class SplitSampler:
    """Samples `connection_split` every `interval_s` while a load runs (a `with` block)."""

    def __init__(self, port: int, workers: int, interval_s: float = 0.5) -> None:
        self.port, self.workers, self.interval_s = port, workers, interval_s
        self.samples: list[Counter] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            counts = connection_split(self.port)
            if counts:
                self.samples.append(counts)

    def __enter__(self) -> SplitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        """The busier worker's share (median over samples) and the median split, largest first."""
        if not self.samples:
            return {"busier_share": None, "split": []}
        shares = [busier_share(c, self.workers) for c in self.samples]
        middle = sorted(self.samples, key=lambda c: busier_share(c, self.workers))[len(self.samples) // 2]
        return {"busier_share": statistics.median(shares), "split": sorted(middle.values(), reverse=True)}
