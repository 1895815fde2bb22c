"""The chat example on Django and Channels: HTTP to Django, WebSocket to a consumer.

    channels-lite run djchat.asgi:application --app-dir examples/django_chat

then open http://127.0.0.1:8000/ in two browser tabs. On a deployment of your
own, every worker runs the same command::

    channels-lite worker djchat.asgi:application --app-dir examples/django_chat

This is an ordinary Channels project (``ProtocolTypeRouter``, ``URLRouter``,
an ``AsyncJsonWebsocketConsumer``): nothing in it knows it runs on
channels-lite rather than Daphne or uvicorn, except the channel layer backend
in its settings. The page and the chat protocol are those of
``examples/starlette_chat.py``, down to the group names: ``chat-<room>``.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djchat.settings")
# Django must be set up before anything that imports models or settings.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from .routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)
