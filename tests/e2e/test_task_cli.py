"""``channels-lite enqueue`` and ``dead-letters`` against a running worker.

Why: tests/test_cli_publish.py checks what these commands write to and read
from Redis; tests/e2e/test_tasks.py runs tasks enqueued by a raw client. This
is the operator's whole loop with real processes on both ends: enqueue from
the shell (inline, a file, stdin) and see the task's effect; watch a task
that keeps failing land in the dead letters after its retries, find it with
``dead-letters list``, fix the cause, ``dead-letters replay`` it and see it
run. Handlers are in ``apps/tasks_app.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect

from .conftest import Deploy
from .test_tasks import READY, TASKS, _records, _settled

pytestmark = pytest.mark.anyio

ENTRY_ID = re.compile(r"\d+-\d+")


async def cli(
    redis_url: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``python -m channels_lite ARGS --redis-url URL``, configured by its arguments alone."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHANNELS_LITE_") and k != "REDIS_URL"
    }
    command = [sys.executable, "-m", "channels_lite", *args, "--redis-url", redis_url]
    with anyio.fail_after(30):
        return await anyio.run_process(
            command, input=None if stdin is None else stdin.encode(), env=env, check=False
        )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_enqueue_from_the_shell_reaches_a_running_worker(
    deploy: Deploy, redis_url: str, tmp_path: Path
) -> None:
    deployment = deploy("layer_app:app", workers=1, worker_args=TASKS)
    deployment.workers[0].wait_for(READY)
    message_file = tmp_path / "task.json"
    message_file.write_text(json.dumps({"type": "broadcast", "text": "from a file"}))
    async with connect(deployment.ws_url + "/chat") as ws:
        with anyio.fail_after(10):
            assert "joined" in json.loads(await ws.recv())
        inline = '{"type": "broadcast", "text": "inline"}'
        stdin = '{"type": "broadcast", "text": "from stdin"}'
        printed = [
            ok(await cli(redis_url, "enqueue", "broadcast", inline)),
            ok(await cli(redis_url, "enqueue", "broadcast", f"@{message_file}")),
            ok(await cli(redis_url, "enqueue", "broadcast", "-", stdin=stdin)),
        ]
        # The handler group_sends each text to the room this socket joined.
        with anyio.fail_after(10):
            texts = [json.loads(await ws.recv())["text"] for _ in range(3)]
    assert sorted(texts) == ["from a file", "from stdin", "inline"]
    assert all(ENTRY_ID.fullmatch(line.strip()) for line in printed), printed
    await _settled(redis_url, "broadcast")


async def test_a_failing_task_is_dead_lettered_listed_fixed_and_replayed(
    deploy: Deploy, redis_url: str, tmp_path: Path
) -> None:
    deployment = deploy(app=None, servers=0)
    worker = deployment.add_worker(
        "echo:app", *TASKS, "--task-max-attempts", "3", "--task-retry-backoff", "0.05",
        env={"E2E_DIR": str(tmp_path)},
    )  # fmt: skip
    worker.wait_for(READY)
    ok(await cli(redis_url, "enqueue", "flaky", '{"type": "flaky", "id": "report-7"}'))
    # Three runs (the first and two retries), then given up.
    runs = await _records(tmp_path / "flaky.jsonl", 3)
    assert [(r["attempts"], r["fixed"]) for r in runs] == [(0, False), (1, False), (2, False)]
    await anyio.to_thread.run_sync(
        worker.wait_for, r"failed on its last run \(3\); moved to the dead letters"
    )

    result = await cli(redis_url, "dead-letters", "list")
    header, row = ok(result).splitlines()
    assert header.split() == ["ID", "AGE", "STREAM", "ENTRY", "TYPE", "ERROR"]
    assert row.split()[2] == "asgi:task:flaky"
    assert row.split()[4] == "flaky"
    assert "RuntimeError: flaky report-7: not fixed yet" in row
    assert result.stderr.decode() == "1 of 1 dead letter(s) shown\n"
    [letter] = json.loads(ok(await cli(redis_url, "dead-letters", "list", "--json")))
    assert letter["id"] == row.split()[0]
    assert (letter["stream"], letter["type"]) == ("asgi:task:flaky", "flaky")
    assert "RuntimeError: flaky report-7: not fixed yet" in letter["error"]
    assert "Traceback" in letter["error"]

    (tmp_path / "fixed").touch()  # what the operator fixes before replaying
    assert ok(await cli(redis_url, "dead-letters", "replay", letter["id"])) == (
        "replayed 1 dead letter(s)\n"
    )
    runs = await _records(tmp_path / "flaky.jsonl", 4)
    # The replayed task keeps its count: one more run, which now succeeds.
    assert runs[3] == {
        "event": "run", "attempts": 2, "id": "report-7", "fixed": True, "pid": worker.pid
    }  # fmt: skip
    await _settled(redis_url, "flaky")
    result = await cli(redis_url, "dead-letters", "list", "--json")
    assert json.loads(ok(result)) == []
    assert result.stderr.decode() == "0 of 0 dead letter(s) shown\n"
