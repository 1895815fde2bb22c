"""Running an app's ASGI lifespan in a worker.

Every worker runs the app's start-up before taking any connection and its
shutdown after the last one, so ``scope["state"]`` filled at start-up is there
for every request (each gets a shallow copy, as uvicorn does). ``auto`` treats
an app that raises before answering ``lifespan.startup`` as one without
lifespan support; ``on`` makes that fatal.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from channels_lite.exceptions import ChannelsLiteError

logger = logging.getLogger(__name__)

Message = dict[str, Any]


class LifespanFailed(ChannelsLiteError):
    """The app's lifespan start-up failed; the worker must not serve."""


@asynccontextmanager
async def lifespan(
    app: Any, mode: str, *, shutdown_timeout: float
) -> AsyncIterator[dict[str, Any]]:
    """Run start-up, yield the lifespan state, run shutdown.

    Raises:
        LifespanFailed: start-up failed (or, with ``mode="on"``, is unsupported).
    """
    state: dict[str, Any] = {}
    if mode == "off":
        yield state
        return
    to_app_send, to_app = anyio.create_memory_object_stream[Message](math.inf)
    from_app_send, from_app = anyio.create_memory_object_stream[Message](math.inf)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    app_error: list[BaseException] = []

    async def run_app() -> None:
        try:
            await app(scope, to_app.receive, from_app_send.send)
        except Exception as exc:
            app_error.append(exc)
        finally:
            from_app_send.close()

    failure: LifespanFailed | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_app)
        await to_app_send.send({"type": "lifespan.startup"})
        reply = await _next(from_app)
        if reply is not None and reply["type"] == "lifespan.startup.complete":
            logger.info("lifespan start-up complete")
            try:
                yield state
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(shutdown_timeout):
                    # Shielded: shutdown runs even when the worker is being cancelled.
                    await to_app_send.send({"type": "lifespan.shutdown"})
                    reply = await _next(from_app)
                    if reply is not None and reply["type"] == "lifespan.shutdown.failed":
                        logger.error("lifespan shutdown failed: %s", reply.get("message", ""))
                tg.cancel_scope.cancel()
            return
        # Start-up did not complete. Raised below, outside the task group, so
        # callers get LifespanFailed itself rather than an ExceptionGroup.
        if reply is not None:
            message = reply.get("message", "") if reply["type"].endswith(".failed") else ""
            failure = LifespanFailed(f"lifespan start-up failed: {message or reply['type']}")
        elif mode == "on" or not app_error:
            if app_error:
                logger.error("exception in the app's lifespan start-up", exc_info=app_error[0])
            cause = repr(app_error[0]) if app_error else "the app returned without answering"
            failure = LifespanFailed(f"lifespan start-up did not complete: {cause}")
        tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    logger.info("app does not support lifespan (%r); continuing without it", app_error[0])
    yield state


async def _next(stream: Any) -> Message | None:
    try:
        message: Message = await stream.receive()
    except anyio.EndOfStream:
        return None
    return message
