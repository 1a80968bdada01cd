"""Local processes of the stack, the tests and the benchmarks: a free port, `bentoml serve` until it
is ready, and stopping a process with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
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


def wait_until_ready(
    proc: subprocess.Popen, url: str, what: str, log_path: Path, timeout: float, poll_s: float = 0.05
) -> None:
    """Returns once GET `url` answers 200; raises RuntimeError if `proc` exits first, TimeoutError
    after `timeout` seconds, each with the tail of its log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout}s:\n{log_path.read_text()[-4000:]}")
        time.sleep(poll_s)


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
