"""A client reading a 1 GiB streaming response slowly, and what it costs each process.

One protocol server, one worker (``bench/apps/stream.py``: 64 KiB sends) and
a private Redis. The client reads at ``--rate`` MiB/s through a socket with
a 64 KiB receive buffer. Measured over the transfer:

* peak RSS growth (``VmHWM`` after ``clear_refs``) of the protocol server,
  the worker and ``redis-server``;
* Redis ``used_memory``, its largest value (sampled every 10 ms) minus the
  value before;
* the longest any ``asgi:*`` stream got (sampled every 10 ms).

With credit-based flow control all of these stay at about the 1 MiB window
whatever the size; without it the worker would push the whole response
into Redis as fast as it could.

    python bench/slow_reader.py [--mib 1024] [--rate 64]

Linux only (``/proc``). The suite's quick version is
``tests/e2e/test_backpressure.py::test_slow_reader_keeps_every_process_and_stream_bounded``.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from pathlib import Path

import redis
from http_bench import APPS, PY, free_port, redis_server, spawn

MiB = 1024 * 1024


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def read_slowly(port: int, mib: int, rate: float) -> int:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /?mib={mib} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        received = len(head.partition(b"\r\n\r\n")[2])
        started = time.monotonic()
        while piece := sock.recv(256 * 1024):
            received += len(piece)
            ahead = received / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="response size (MiB)")
    parser.add_argument("--rate", type=float, default=64.0, help="reading rate (MiB/s)")
    args = parser.parse_args()
    with redis_server() as url:
        client = redis.Redis.from_url(url)
        port = free_port()
        common = ["--redis-url", url, "--log-level", "warning"]
        worker_args = [PY, "-m", "channels_lite", "worker", "stream:app", "--app-dir", str(APPS)]
        worker_args += ["--lifespan", "off"]
        server_args = [PY, "-m", "channels_lite", "protocol-server", "--bind", f"127.0.0.1:{port}"]
        with (
            spawn([*worker_args, *common]) as worker,
            spawn([*server_args, *common], port=port) as server,
        ):
            read_slowly(port, 4, 1e9)  # warm up: first-use allocations are not growth
            pids = {
                "protocol server": server.pid,
                "worker": worker.pid,
                "redis": int(client.info("server")["process_id"]),
            }
            base = {}
            for name, pid in pids.items():
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                base[name] = peak_rss(pid)
            used_base = int(client.info("memory")["used_memory"])
            used_max, longest = used_base, 0
            stop = threading.Event()

            def sample() -> None:
                nonlocal used_max, longest
                sampler = redis.Redis.from_url(url)
                while not stop.wait(0.01):
                    used_max = max(used_max, int(sampler.info("memory")["used_memory"]))
                    for key in sampler.scan_iter("asgi:*", _type="stream"):
                        longest = max(longest, sampler.xlen(key))
                sampler.close()

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            started = time.monotonic()
            received = read_slowly(port, args.mib, args.rate * MiB)
            seconds = time.monotonic() - started
            stop.set()
            thread.join()
            growth = {name: peak_rss(pid) - base[name] for name, pid in pids.items()}
        client.close()
    assert received == args.mib * MiB, received
    print(f"{args.mib} MiB read at {args.rate:g} MiB/s in {seconds:.1f} s")
    for name, size in growth.items():
        print(f"  peak RSS growth, {name}: {size / MiB:+.1f} MiB")
    print(f"  redis used_memory growth (peak): {(used_max - used_base) / MiB:+.1f} MiB")
    print(f"  longest stream: {longest} entries")


if __name__ == "__main__":
    main()
