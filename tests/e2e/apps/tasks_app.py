"""Background-task handlers for the end-to-end tests (``--tasks tasks_app:tasks``).

What a handler must report to the test (it runs in another process) is
appended as a JSON line to ``$E2E_DIR/<name>.jsonl``, so the test can read
every run, whichever worker made it.

* ``hold``: records ``start`` (pid, attempts); on the first run
  (``attempts == 0``) it waits until the test creates ``$E2E_DIR/release``
  (at most 30 s), so it can be killed mid-run; then records ``done``.
* ``flaky``: records ``run`` (pid, attempts, id, whether fixed) and raises
  ``RuntimeError`` unless the test has created ``$E2E_DIR/fixed``: a task
  that keeps failing until someone fixes what it depends on.
* ``broadcast``: ``group_send`` of ``{"type": "chat.message", "text": ...}`` to
  the group ``room`` (what ``layer_app``'s WebSockets join).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio

from channels_lite.tasks import TaskContext, TaskRegistry

tasks = TaskRegistry()


def _record(name: str, **data: Any) -> None:
    path = Path(os.environ["E2E_DIR"]) / f"{name}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps({**data, "pid": os.getpid()}) + "\n")


@tasks.task("hold")
async def hold(message: dict[str, Any], ctx: TaskContext) -> None:
    _record("hold", event="start", attempts=ctx.attempts, id=message["id"])
    if ctx.attempts == 0:
        release = anyio.Path(os.environ["E2E_DIR"]) / "release"
        with anyio.move_on_after(30):
            while not await release.exists():  # noqa: ASYNC110 (a file from the test)
                await anyio.sleep(0.05)
    _record("hold", event="done", attempts=ctx.attempts, id=message["id"])


@tasks.task("broadcast")
async def broadcast(message: dict[str, Any], ctx: TaskContext) -> None:
    await ctx.channel_layer.group_send("room", {"type": "chat.message", "text": message["text"]})


@tasks.task("flaky")
async def flaky(message: dict[str, Any], ctx: TaskContext) -> None:
    fixed = await (anyio.Path(os.environ["E2E_DIR"]) / "fixed").exists()
    _record("flaky", event="run", attempts=ctx.attempts, id=message["id"], fixed=fixed)
    if not fixed:
        raise RuntimeError(f"flaky {message['id']}: not fixed yet")
