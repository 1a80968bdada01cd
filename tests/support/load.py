"""Clients posting /inference from several threads until stopped: the load of the fault tests."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter

import httpx

Result = tuple[float, int, float, dict | None]
"""(sent, status, seconds, JSON answer): status -1 for a transport error (refused, reset, timed
out); the answer None then, or when it is not JSON."""


class Load:
    def __init__(self, url: str, body: dict, threads: int = 4, timeout_s: float = 5) -> None:
        self.url = url
        self.body = body
        self.timeout_s = timeout_s
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post("/inference", json=self.body)
                except httpx.TransportError:
                    self.results.append((sent, -1, time.monotonic() - sent, None))
                    continue
                try:
                    answer = response.json()
                except ValueError:
                    answer = None
                self.results.append((sent, response.status_code, time.monotonic() - sent, answer))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def since(self, moment: float) -> list[Result]:
        return [r for r in self.results if r[0] >= moment]

    def report(self, what: str, since: float) -> str:
        """The counts, and the slowest answers: the outage, if a client saw one."""
        statuses = Counter(status for _, status, _, _ in self.results)
        took = sorted(seconds for _, _, seconds, _ in self.results)
        failed = sum(n for status, n in statuses.items() if status != 200)
        return (
            f"{what}: {len(self.results)} requests in {time.monotonic() - since:.1f} s, {failed} failed "
            f"{dict(statuses)}; latency p50 {statistics.median(took) * 1e3:.1f} ms, "
            f"p99 {took[int(len(took) * 0.99)] * 1e3:.1f} ms, max {took[-1] * 1e3:.0f} ms"
        )
