"""``channels-lite status`` against a live deployment, run as an operator runs it.

Why: status is how an operator sees which processes are alive and where
work piles up, so its contract is the process's: the JSON document scripts
read, the tables people read, the exit code, and ``--watch`` ending cleanly
on Ctrl-C. Real processes and a real Redis; nothing is mocked.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import redis

from channels_lite import keys, wire

from .conftest import Deploy


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "channels_lite", "status", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def status_json(redis_url: str) -> dict[str, Any]:
    result = status("--json", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def wait_status(redis_url: str, servers: int, workers: int) -> dict[str, Any]:
    """Status once it shows that many live processes (heartbeats start just after readiness)."""
    deadline = time.monotonic() + 10
    while True:
        document = status_json(redis_url)
        roles = [p["role"] for p in document["processes"]]
        if (roles.count("ps"), roles.count("wk")) == (servers, workers):
            return document
        assert time.monotonic() < deadline, document
        time.sleep(0.2)


def test_status_lists_processes_streams_and_dead_letters(deploy: Deploy, redis_url: str) -> None:
    deployment = deploy("echo:app", workers=2, servers=1)
    assert httpx.get(deployment.url + "/hello", timeout=10).status_code == 200
    raw = redis.Redis.from_url(redis_url)
    letter = wire.DeadLetter("asgi:task:emails", "1700000000000-0", {b"k": b"v"}, "boom")
    raw.xadd(keys.dead_letters("asgi"), wire.encode(letter))
    raw.xadd(keys.task_stream("asgi", "emails"), {b"k": b"v"})
    raw.close()

    document = wait_status(redis_url, 1, 2)
    assert set(document) == {
        "prefix", "time", "processes", "streams", "dead_letters", "delayed_tasks", "drops"
    }  # fmt: skip
    by_role = {
        role: [p for p in document["processes"] if p["role"] == role] for role in ("ps", "wk")
    }
    assert [p["pid"] for p in by_role["ps"]] == [deployment.servers[0].pid]
    assert sorted(p["pid"] for p in by_role["wk"]) == sorted(w.pid for w in deployment.workers)
    for process in document["processes"]:
        assert {"id", "host", "age", "started", "seen", "layer"} <= set(process)
        assert process["age"] >= 0
    assert by_role["ps"][0]["connections"] == 0
    assert all(p["active"] == 0 and p["concurrency"] >= 1 for p in by_role["wk"])
    streams = {s["name"]: s for s in document["streams"]}
    connect = streams["asgi:connect"]
    assert connect["group"] == "workers"
    assert isinstance(connect["length"], int)
    assert connect["pending"] == 0
    assert streams["asgi:task:emails"] == {
        "name": "asgi:task:emails", "group": "tasks", "length": 1, "pending": 0
    }  # fmt: skip
    assert document["dead_letters"] == 1
    assert document["drops"] == {"dropped": 0, "expired": 0, "full": 0, "malformed": 0}

    human = status("--redis-url", redis_url)
    assert human.returncode == 0, human.stderr
    for process in document["processes"]:
        assert process["id"] in human.stdout
    assert "asgi:connect" in human.stdout
    assert "dead letters 1" in human.stdout

    # A clean stop deletes the heartbeat key: the worker is gone at once.
    stopped = deployment.workers[1]
    stopped_id = next(p["id"] for p in by_role["wk"] if p["pid"] == stopped.pid)
    assert stopped.stop() == 0
    after = status_json(redis_url)
    assert stopped_id not in [p["id"] for p in after["processes"]]
    assert [p["role"] for p in after["processes"]] == ["ps", "wk"]


def test_unreachable_redis_is_one_line_exit_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    result = status("--redis-url", f"redis://127.0.0.1:{port}", "--timeout", "3")
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: Redis unavailable")


def test_watch_refreshes_until_ctrl_c(redis_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "channels_lite", "status", "--json", "--watch", "0.2",
         "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        snapshots = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert snapshots[0]["time"] < snapshots[1]["time"]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
