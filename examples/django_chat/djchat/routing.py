from __future__ import annotations

from django.urls import re_path

from .consumers import ChatConsumer

websocket_urlpatterns = [
    # Any room in the URL: the consumer refuses a bad name (403) rather than
    # leaving URLRouter to fail the handshake with a 500.
    re_path(r"^ws/chat/(?P<room>[^/]+)/$", ChatConsumer.as_asgi()),
]
