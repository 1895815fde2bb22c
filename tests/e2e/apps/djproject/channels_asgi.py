"""Django plus Channels: HTTP to Django, WebSocket to consumers, layer on Redis Streams."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproject.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .consumers import ChatConsumer, EchoConsumer, PushConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(
            [
                path("ws/echo/", EchoConsumer.as_asgi()),
                path("ws/chat/<str:room>/", ChatConsumer.as_asgi()),
                path("ws/push/<str:room>/", PushConsumer.as_asgi()),
            ]
        ),
    }
)
