"""Local processes of the stack, the tests and the benchmarks: a free port, waiting for something a
process does, `bentoml serve` until it is ready, and stopping a process with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import psutil

from driver_ranker.config import PROJECT_ROOT

SERVING_ENV = {"PYTHONOPTIMIZE": "1"}
"""How `bentoml serve` runs here and in the image (bentofile.yaml): with Python's -O, under which
typeguard's @typechecked is a no-op. Feast decorates its classes with it, and it re-parses and
recompiles their source at every import: 3.6 s of a worker's 5.7 s of imports (README,
Performance). Only asserts go with it; driver-ranker has none. `make install` and the image
compile the -O bytecode beforehand."""


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_ready(
    target: str,
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    ready_timeout: float = 120,
    host: str | None = None,
) -> subprocess.Popen:
    """`bentoml serve target` (with SERVING_ENV) on `port` in a session of its own, once its /readyz
    says 200.

    Output goes to `log_path`; a server that exits or is not ready in time is reported with its tail.
    `host`: the address it listens on (None: BentoML's default, every interface).
    """
    bind = ["--host", host] if host else []
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--port", str(port), *bind],
            cwd=PROJECT_ROOT, env={**env, **SERVING_ENV}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_ready(proc, f"http://127.0.0.1:{port}/readyz", target, log_path, ready_timeout)
    except TimeoutError:
        stop_process_group(proc)
        raise
    return proc


def wait_for(
    condition: Callable[[], object],
    within: float,
    what: str,
    *,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
    poll_s: float = 0.1,
) -> float:
    """Seconds until `condition()` is true. Raises RuntimeError when `proc` exits first and
    TimeoutError after `within` seconds, each saying `what` (and the tail of `log_path`)."""
    started = time.monotonic()

    def tail() -> str:
        return f":\n{log_path.read_text(errors='replace')[-4000:]}" if log_path is not None else ""

    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {what}{tail()}")
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise TimeoutError(f"not within {within}s: {what}{tail()}")
        time.sleep(poll_s)


def answers_200(url: str) -> bool:
    """GET `url` answers 200 within a second."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def port_open(port: int) -> bool:
    """Something accepts connections on the loopback `port`."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until_ready(
    proc: subprocess.Popen, url: str, what: str, log_path: Path, timeout: float, poll_s: float = 0.05
) -> None:
    """Returns once GET `url` answers 200 (`wait_for`'s errors otherwise, with the log's tail)."""
    wait_for(
        lambda: answers_200(url), timeout, f"{what} is ready", proc=proc, log_path=log_path, poll_s=poll_s
    )


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM to the process and its children, SIGKILL after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL to the process, its group and every descendant, as a container's end would.

    The group is not enough for `bentoml serve`: its process manager (circus) starts each worker in
    a session of its own, and a worker outliving it keeps serving on the inherited socket.
    """
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    proc.wait()
