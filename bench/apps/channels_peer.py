"""The broadcast benchmark's peer: a Django Channels chat room on channels_redis.

What a user would deploy without channels-lite: uvicorn serving a Channels
app in-process, with ``RedisChannelLayer`` as ``CHANNEL_LAYERS``. It does what
``tests/e2e/apps/layer_app.py`` does for ours: each WebSocket joins group
``room``, is told ``{"joined": ..., "pid": ...}``, and gets every
``chat.message`` group event as ``{"text": ..., "pid": ...}`` in the same
compact JSON (Starlette's ``send_json``), so clients read the same bytes.

Settings are made here, in code: the Redis URL comes from
``BENCH_PEER_REDIS_URL`` (``bench/broadcast_bench.py`` points it at another
database of its private Redis than ours uses).

    BENCH_PEER_REDIS_URL=redis://127.0.0.1:6379/1 \\
        uvicorn channels_peer:application --app-dir bench/apps --lifespan off
"""

from __future__ import annotations

import json
import os
from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="broadcast-bench-peer",  # a benchmark: nothing to protect
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=[],
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [os.environ["BENCH_PEER_REDIS_URL"]]},
        }
    },
)
django.setup()

# Channels' and Django's modules read the settings when imported: after setup().
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "room"


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]  # channels is untyped
    async def connect(self) -> None:
        await self.accept()
        await self.channel_layer.group_add(GROUP, self.channel_name)
        # Sent once a member of the group, as layer_app does: the bench
        # publishes only after every client has read this.
        await self.send(text_data=_dumps({"joined": self.channel_name, "pid": os.getpid()}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=_dumps({"text": event["text"], "pid": os.getpid()}))


application = ProtocolTypeRouter({"websocket": URLRouter([path("chat", ChatConsumer.as_asgi())])})
