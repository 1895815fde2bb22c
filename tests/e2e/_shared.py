"""One deployment shared by the tests of a module, on its own Redis.

Starting and stopping processes is most of an end-to-end test's time, so
tests that only need an ordinary deployment share one per module. It gets a
private ``redis-server`` (the function-scoped ``redis_url`` fixture flushes the
shared one, which would pull the streams from under a long-lived deployment)
and a scratch directory the apps can write to (``E2E_DIR`` in the workers'
environment).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests._redis import RedisServer, find_redis_server

from .conftest import Deployment, stop_together


@contextlib.contextmanager
def shared_deployment(
    directory: Path,
    app: str,
    *,
    workers: int = 2,
    servers: Sequence[Sequence[str]] = ((),),
    worker_args: Sequence[str] = (),
) -> Iterator[tuple[Deployment, Path]]:
    """A deployment (one server per entry of ``servers``, with those args) and its E2E_DIR."""
    if find_redis_server() is None:
        pytest.fail("the end-to-end tests need `redis-server` on PATH", pytrace=False)
    redis = RedisServer(directory / "redis-dir")
    (directory / "redis-dir").mkdir()
    scratch = directory / "app-dir"
    scratch.mkdir()
    redis.start()
    deployment = Deployment(redis.url)
    try:
        for args in servers:
            deployment.add_server(*args)
        for _ in range(workers):
            deployment.add_worker(app, *worker_args, env={"E2E_DIR": str(scratch)})
        yield deployment, scratch
    finally:
        processes = [*deployment.workers, *deployment.servers]
        stop_together(processes)
        redis.kill()
    # Every connection of every test ended: nothing holds a process past SIGTERM.
    codes = [p.proc.returncode for p in processes if p.proc is not None]
    assert codes == [0] * len(codes), f"exit codes {codes}:\n{deployment.logs()}"


@contextlib.contextmanager
def own_logs_on_failure(deployment: Deployment, request: pytest.FixtureRequest) -> Iterator[None]:
    """Around one test of a shared deployment: print only that test's log lines if it fails."""
    marks = log_marks(deployment)
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(logs_since(deployment, marks))


def log_marks(deployment: Deployment) -> list[int]:
    """How many log lines each process has so far (to show only a test's own)."""
    return [len(p.lines) for p in [*deployment.servers, *deployment.workers]]


def logs_since(deployment: Deployment, marks: list[int]) -> str:
    processes = [*deployment.servers, *deployment.workers]
    names = [f"server {i}" for i in range(len(deployment.servers))]
    names += [f"worker {i}" for i in range(len(deployment.workers))]
    parts = []
    for name, process, mark in zip(names, processes, [*marks, *[0] * len(processes)], strict=False):
        parts.append(f"--- {name} ---\n" + "\n".join(process.lines[mark:]))
    return "\n".join(parts)


async def wait_for_file(path: Path, seconds: float = 5.0) -> dict[str, Any]:
    """Wait until the app has written ``path`` (atomically) and return its JSON."""
    file = anyio.Path(path)
    for _ in range(int(seconds / 0.005)):
        if await file.exists():
            data: dict[str, Any] = json.loads(await file.read_text())
            return data
        await anyio.sleep(0.005)
    raise AssertionError(f"{path.name} did not appear within {seconds}s")
