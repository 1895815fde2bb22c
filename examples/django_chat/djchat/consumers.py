"""The chat consumer: a room is the group ``chat-<room>``, as in the Starlette example."""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer

ROOM = re.compile(r"[A-Za-z0-9_-]{1,40}")
MAX_NAME = 32
MAX_TEXT = 2000


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins the room's group; what the client sends goes to every member."""

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        if not ROOM.fullmatch(room):
            await self.close()  # before accept: the handshake gets 403
            return
        query = parse_qs(self.scope["query_string"].decode("latin-1"))
        self.name = " ".join(query.get("name", [""])[0].split())[:MAX_NAME] or "guest"
        self.group = f"chat-{room}"
        await self.accept()
        await self.send_json(
            {
                "type": "welcome",
                "room": room,
                "name": self.name,
                "worker": os.getpid(),
                "framework": "Django Channels",
            }
        )
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.channel_layer.group_send(
            self.group, {"type": "chat.join", "name": self.name, "worker": os.getpid()}
        )

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):  # connected
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await self.channel_layer.group_send(
                self.group, {"type": "chat.leave", "name": self.name}
            )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """A frame from the client: ``{"text": "..."}``; anything else is answered with an error."""
        try:
            text = _parse_text(text_data)
        except ValueError as exc:  # the sender hears why; the socket stays open
            await self.send_json({"type": "error", "error": str(exc)})
            return
        await self.channel_layer.group_send(
            self.group,
            {"type": "chat.message", "name": self.name, "text": text, "worker": os.getpid()},
        )

    # Group messages: "chat.message" calls chat_message, and so on.

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "message",
                "name": str(event.get("name") or "server"),
                "text": str(event["text"]),
                "worker": event.get("worker"),
            }
        )

    async def chat_join(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "join", "name": event["name"], "worker": event["worker"]})

    async def chat_leave(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "leave", "name": event["name"]})


def _parse_text(frame: str | None) -> str:
    if frame is None:
        raise ValueError('send text frames of JSON: {"text": "..."}')
    try:
        data = json.loads(frame)
    except ValueError:
        raise ValueError('not JSON: send {"text": "..."}') from None
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError('"text" must be a non-empty string')
    if len(text) > MAX_TEXT:
        raise ValueError(f"a message has at most {MAX_TEXT} characters")
    return text
