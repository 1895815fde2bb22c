"""Fixtures for end-to-end tests: whole deployments of real processes.

``deploy(app, workers=2, servers=1, ...)`` starts protocol servers and
workers (real subprocesses of the ``channels-lite`` CLI) against the test's
private Redis and stops them all at teardown, SIGTERM first. A test that
fails shows every process's log.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ._procs import Process, start_protocol_server, start_worker


@dataclass
class Deployment:
    redis_url: str
    servers: list[Process] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    workers: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)

    def add_worker(self, app: str, *args: str, env: dict[str, str] | None = None) -> Process:
        worker = start_worker(self.redis_url, app, *args, env=env)
        self.workers.append(worker)
        return worker

    def add_server(self, *args: str, env: dict[str, str] | None = None) -> Process:
        server, url = start_protocol_server(self.redis_url, *args, env=env)
        self.servers.append(server)
        self.urls.append(url)
        return server

    def logs(self) -> str:
        parts = [f"--- server {i} ---\n{p.log()}" for i, p in enumerate(self.servers)]
        parts += [f"--- worker {i} ---\n{p.log()}" for i, p in enumerate(self.workers)]
        return "\n".join(parts)


Deploy = Callable[..., Deployment]


def stop_together(processes: Sequence[Process], timeout: float = 15.0) -> None:
    """SIGTERM all at once (their drains overlap), wait, SIGKILL what is left.

    One SIGTERM each: a second one can land after a process has put back the
    default handler on its way out, and kill it (exit -15) mid-shutdown.
    """
    running = [p for p in processes if p.proc is not None and p.proc.poll() is None]
    for process in running:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        assert process.proc is not None
        try:
            process.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.signal(signal.SIGKILL)
    for process in processes:
        process.stop()  # reaps and closes the log pipe; signals nothing now


@pytest.fixture
def deploy(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Deploy]:
    deployments: list[Deployment] = []

    def make(
        app: str | None = "echo:app",
        *,
        workers: int = 2,
        servers: int = 1,
        server_args: Sequence[str] = (),
        worker_args: Sequence[str] = (),
    ) -> Deployment:
        deployment = Deployment(redis_url)
        deployments.append(deployment)
        for _ in range(servers):
            deployment.add_server(*server_args)
        if app is not None:
            for _ in range(workers):
                deployment.add_worker(app, *worker_args)
        return deployment

    yield make
    failed = getattr(request.node, "rep_call", None)
    stop_together([p for d in deployments for p in [*d.workers, *d.servers]])
    for deployment in deployments:
        if failed is not None and failed.failed:
            print(deployment.logs())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# For modules that start one deployment for all their tests: they define a
# module-scoped ``shared`` fixture giving ``(deployment, e2e_dir)`` (see
# ``_shared.shared_deployment``); these hand it to each test, with that
# test's share of the processes' logs shown if it fails.


@pytest.fixture
def deployment(
    shared: tuple[Deployment, Path], request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    from ._shared import own_logs_on_failure  # _shared imports this module

    with own_logs_on_failure(shared[0], request):
        yield shared[0]


@pytest.fixture
def e2e_dir(shared: tuple[Deployment, Path]) -> Path:
    """The directory the shared deployment's apps write what they saw to."""
    return shared[1]
