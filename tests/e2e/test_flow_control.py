"""Credit-based flow control, measured: 100 MB each way in bounded memory.

One protocol server and one worker running ``flow:app`` (tests/e2e/apps/flow.py)
on a private Redis. Every transfer is 100 MiB of bytes generated on the fly
by :func:`~tests.e2e.apps.flow.data`; the client checks the size and the
sha256 incrementally and never holds the body.

What is measured, per transfer:

* the peak resident set (``VmHWM``) of the protocol-server process, of the
  worker process and of ``redis-server``, each reset to the current RSS
  just before the transfer (``echo 5 > /proc/PID/clear_refs``), so the
  growth is this transfer's own;
* Redis's ``used_memory`` (what its allocator holds for data, client buffers
  included), sampled every few milliseconds during the transfer.

Bounds. With a 1 MiB window per direction, no more than about 1 MiB of
body is between the app and the socket, in relay chunks of 256 KiB; each
process holds a few chunks at a time (a layer batch, an encoded entry, a
socket buffer). Measured growth: 0 to 2.5 MiB per process after the
warm-up (about 3 MiB from cold), Redis's used_memory 0.4 to 1.8 MiB.
``RSS_BOUND`` is 24 MiB: far above that, to absorb allocator and GC timing
on a loaded machine, and still under a quarter of the transfer, so buffering
a large part of the body fails (with a 1 GiB window the slow tests measure
95 to 112 MiB of growth). A slow reader on either side must hold the fast
side to the window plus the kernel's socket buffers (``LEAD_BOUND``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from ._shared import log_marks, logs_since, shared_deployment
from .apps.flow import MiB, data
from .conftest import Deployment

SIZE = 100 * MiB
#: Most a process's peak RSS (or Redis's used_memory) may grow in one transfer.
RSS_BOUND = 24 * MiB
WINDOW = 1 * MiB  # the default --flow-window


def _tcp_buffer_max(name: str) -> int:
    """The most Linux lets a TCP socket buffer grow to (``tcp_wmem``/``tcp_rmem``)."""
    try:
        return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * MiB


#: Most the fast side may be ahead of a slow reader. What may lie between
#: them: the window; bytes credited but not yet on the wire (uvicorn's
#: transport buffer: 64 KiB plus the chunk that crossed it); and the two
#: kernel socket buffers. The test's own is set to 64 KiB; the protocol
#: server's is autotuned by Linux: on a download its send buffer, up to
#: ``tcp_wmem`` max (4 MiB by default; measured 3 to 4 MiB full), on an
#: upload its receive buffer (measured about 1.3 MiB). Plus 2 MiB of slack.
#: Measured leads: 4.2 to 5 MiB for a download, 1.2 to 2 MiB for an upload.
#: Without flow control the lead is the whole body (measured: 88 to 96 MiB
#: with a 1 GiB window).
LEAD_BOUND = WINDOW + _tcp_buffer_max("tcp_wmem") + 2 * MiB
SMALL_SOCKET_BUFFER = 64 * 1024


@functools.cache
def expected_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, MiB):
        digest.update(data(offset, min(MiB, size - offset)))
    return digest.hexdigest()


# ----------------------------------------------------------------------
# Deployment


@dataclass
class Setup:
    deployment: Deployment
    e2e_dir: Path
    redis: redis.Redis
    pids: dict[str, int] = field(default_factory=dict)


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _is_cli_process(pid: int, command: str) -> bool:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return b"channels_lite" in argv and command.encode() in argv


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with shared_deployment(tmp_path_factory.mktemp("flow"), "flow:app", workers=1) as (
        deployment,
        e2e_dir,
    ):
        client = redis.Redis.from_url(deployment.redis_url)
        try:
            server, worker = deployment.servers[0].pid, deployment.workers[0].pid
            # Started directly (no shell, no fork): the pid is the Python process
            # itself, the one whose memory we mean to measure.
            assert _is_cli_process(server, "protocol-server")
            assert _is_cli_process(worker, "worker")
            pids = {
                "protocol server": server,
                "worker": worker,
                "redis": int(client.info("server")["process_id"]),
            }
            # Warm up: first-use allocations (imports, pools, buffers) are not growth.
            with httpx.Client(base_url=deployment.url, timeout=30) as http:
                for path in ("/stream?mib=4&chunk=65536", "/single?mib=4"):
                    assert len(http.get(path).content) == 4 * MiB
                assert http.post("/upload", content=data(0, 4 * MiB)).json()["size"] == 4 * MiB
            yield Setup(deployment, e2e_dir, client, pids)
        finally:
            client.close()


@pytest.fixture
def env(setup: Setup, request: pytest.FixtureRequest) -> Iterator[Setup]:
    marks = log_marks(setup.deployment)
    yield setup
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(logs_since(setup.deployment, marks))


# ----------------------------------------------------------------------
# Measuring


class Peaks:
    """Peak memory of the deployment's processes over a ``with`` block."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.growth: dict[str, int] = {}
        self.redis_used_growth = 0
        self.seconds = 0.0
        self._stop = threading.Event()
        self._used_max = 0

    def __enter__(self) -> Peaks:
        self._base: dict[str, int] = {}
        for name, pid in self.setup.pids.items():
            # 5: reset the peak RSS to the current RSS (Linux >= 4.0).
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self._base[name] = _status(pid)["VmHWM"]
        self._used_base = self._used()
        self._used_max = self._used_base
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self._stop.set()
        self._sampler.join(5)
        for name, pid in self.setup.pids.items():
            self.growth[name] = _status(pid)["VmHWM"] - self._base[name]
        self.redis_used_growth = self._used_max - self._used_base

    def _used(self) -> int:
        return int(self.setup.redis.info("memory")["used_memory"])

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._used_max = max(self._used_max, self._used())

    def report(self, what: str) -> str:
        growth = ", ".join(f"{name} {size / MiB:+.1f} MiB" for name, size in self.growth.items())
        return (
            f"{what}: {self.seconds:.2f} s; peak RSS {growth}; "
            f"redis used_memory {self.redis_used_growth / MiB:+.1f} MiB"
        )

    def check(self, what: str, *, app_holds: int = 0) -> None:
        """Print the figures and assert every growth is within bounds.

        ``app_holds``: bytes the worker's app holds by itself (a body it
        built whole), which the worker's bound allows on top.
        """
        print(self.report(what))
        for name, size in self.growth.items():
            bound = RSS_BOUND + (app_holds if name == "worker" else 0)
            assert size < bound, f"{name}: peak RSS grew {size / MiB:.1f} MiB\n{self.report(what)}"
        assert self.redis_used_growth < RSS_BOUND, self.report(what)


def _wait_stable(read: Any, *, quiet: float, timeout: float = 10.0) -> Any:
    """Poll ``read()`` until its value has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError(f"still changing after {timeout}s: {value!r}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return loaded


# ----------------------------------------------------------------------
# Responses


def _download(url: str, path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with httpx.Client(base_url=url, timeout=30) as client, client.stream("GET", path) as response:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == SIZE
        for piece in response.iter_raw():
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


@pytest.mark.parametrize(
    ("path", "app_holds"),
    [
        pytest.param("/stream?mib=100&chunk=1048576", 0, id="1MiB-sends"),
        pytest.param("/stream?mib=100&chunk=65536", 0, id="64KiB-sends"),
        # The app builds the whole body, so the worker holds 100 MiB for it;
        # the relay may not hold another copy (it sends it in 256 KiB chunks).
        pytest.param("/single?mib=100", SIZE, id="one-send"),
    ],
)
def test_100mb_response_in_bounded_memory(env: Setup, path: str, app_holds: int) -> None:
    expected_sha256(SIZE)  # computed before the clock starts
    with Peaks(env) as peaks:
        size, sha = _download(env.deployment.url, path)
    assert size == SIZE
    assert sha == expected_sha256(SIZE)
    peaks.check(f"GET {path}", app_holds=app_holds)


def test_slow_client_slows_the_app_not_redis(env: Setup) -> None:
    """A client that reads a little and pauses holds the app back to the window."""
    ident = uuid.uuid4().hex
    progress = env.e2e_dir / f"progress-{ident}.json"
    parts = urlsplit(env.deployment.url)
    assert parts.hostname is not None
    assert parts.port is not None
    digest = hashlib.sha256()
    leads: list[int] = []
    pauses: list[tuple[int, dict[str, Any]]] = []
    with Peaks(env) as peaks, socket.socket() as sock:
        # A small receive buffer, set before connecting so the window scale
        # agrees: the client's kernel then holds little of what we do not read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_SOCKET_BUFFER)
        sock.settimeout(30)
        sock.connect((parts.hostname, parts.port))
        sock.sendall(
            f"GET /stream?mib=100&chunk=65536&id={ident} HTTP/1.1\r\n"
            "Host: test\r\nConnection: close\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        digest.update(body)
        received = len(body)
        for _ in range(3):
            # Read 4 MiB in small pieces, then stop reading for a while.
            target = received + 4 * MiB
            while received < target:
                piece = sock.recv(min(16 * 1024, target - received))
                assert piece
                digest.update(piece)
                received += len(piece)
                time.sleep(0.0005)
            sent = _wait_stable(lambda: _read_json(progress).get("sent", 0), quiet=0.3)
            # Blocked: the app's send waits for credit and stays blocked.
            time.sleep(0.3)
            pauses.append((sent, _read_json(progress)))
            leads.append(sent - received)
        while piece := sock.recv(1024 * 1024):
            digest.update(piece)
            received += len(piece)
    print(f"slow client: the app was ahead by {[f'{lead / MiB:.2f} MiB' for lead in leads]}")
    assert received == SIZE
    assert digest.hexdigest() == expected_sha256(SIZE)
    # The app notes "done" after its last send returned, which may be just
    # after the client has the last byte.
    deadline = time.monotonic() + 5
    while not _read_json(progress).get("done") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _read_json(progress) == {"sent": SIZE, "done": True}
    peaks.check("slow client")
    for sent, later in pauses:
        assert later == {"sent": sent, "done": False}, "the app went on while the client paused"
    assert all(0 <= lead < LEAD_BOUND for lead in leads), leads


# ----------------------------------------------------------------------
# Request bodies


def _upload(url: str, path: str, on_chunk: Any = None) -> tuple[dict[str, Any], float]:
    def body() -> Iterator[bytes]:
        for offset in range(0, SIZE, MiB):
            if on_chunk is not None:
                on_chunk(offset)
            yield data(offset, MiB)

    # A small send buffer: the client's kernel holds little of what the
    # protocol server does not read (as the slow client's receive buffer).
    options = [(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_SOCKET_BUFFER)]
    transport = httpx.HTTPTransport(socket_options=options)
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30, transport=transport) as client:
        response = client.post(path, content=body())
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result, time.perf_counter() - started


def test_100mb_upload_in_bounded_memory(env: Setup) -> None:
    expected_sha256(SIZE)
    with Peaks(env) as peaks:
        result, _ = _upload(env.deployment.url, "/upload")
    assert result["size"] == SIZE
    assert result["sha256"] == expected_sha256(SIZE)
    print(f"upload: {result['chunks']} chunks, largest {result['largest']} bytes")
    peaks.check("POST /upload")


def test_slow_app_slows_the_upload_not_redis(env: Setup) -> None:
    """An app that reads slowly holds the client back to the window."""
    ident = uuid.uuid4().hex
    progress = env.e2e_dir / f"upload-{ident}.json"
    rate, slow = 8 * MiB, 16 * MiB  # the first 16 MiB take at least 2 s
    leads: list[int] = []

    def on_chunk(offset: int) -> None:
        # The client is about to send byte `offset`: the app has read `read`.
        read = _read_json(progress).get("read", 0)
        if read < slow:
            leads.append(offset - read)

    expected_sha256(SIZE)
    with Peaks(env) as peaks:
        result, seconds = _upload(
            env.deployment.url, f"/upload?rate={rate}&slow={slow}&id={ident}", on_chunk
        )
    assert result["size"] == SIZE
    assert result["sha256"] == expected_sha256(SIZE)
    print(f"slow app: the client was ahead by at most {max(leads) / MiB:.2f} MiB")
    peaks.check("slow app")
    assert seconds >= slow / rate
    # While the app was slow the client could not run ahead of it.
    assert max(leads) < LEAD_BOUND, leads
