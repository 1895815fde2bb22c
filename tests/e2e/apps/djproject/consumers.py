"""Channels consumers: an echo, a chat room whose members meet in a group,
and a room whose sockets get pushes (the group's members are the sockets'
``reply_channel``, so the protocol servers write to the clients directly).

The chat consumer reports its worker's pid so that a test can see a message
cross from one worker process to another through the channel layer.
"""

from __future__ import annotations

import json
import os
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer


class EchoConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            if text_data == "close":
                await self.close(code=4001)
                return
            await self.send(text_data="echo: " + text_data)
        elif bytes_data is not None:
            await self.send(bytes_data=bytes_data.upper())


class ChatConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        self.room = "chat_" + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()
        await self.send(text_data=json.dumps({"type": "joined", "pid": os.getpid()}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.channel_layer.group_send(
            self.room, {"type": "chat.message", "text": text_data, "pid": os.getpid()}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(
            text_data=json.dumps(
                {"type": "message", "text": event["text"], "from": event["pid"], "to": os.getpid()}
            )
        )


class PushConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    """Joins ``pushed_<room>`` with its socket's reply channel: group messages
    ``{"type": "websocket.push", ...}`` reach its client with no handler here."""

    async def connect(self) -> None:
        self.room = "pushed_" + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.scope["reply_channel"])
        await self.accept()
        await self.send(text_data=json.dumps({"type": "joined", "pid": os.getpid()}))

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.scope["reply_channel"])
