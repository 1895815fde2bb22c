"""Settings of the chat example: no database, no templates, no static files.

The channel layer is channels-lite's, on the deployment's broker:
``CHANNELS_LITE_REDIS_URL`` and ``CHANNELS_LITE_PREFIX`` are where every
channels-lite process looks, and a worker sets both in its own environment
before it imports the app (whether it got them as options, variables, or
from ``channels-lite run`` with its embedded broker), so the consumers share
groups with every other worker and with publishers outside.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
# The WebSocket route checks the browser's Origin against these, too.
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
ROOT_URLCONF = "djchat.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_lite.layer.RedisStreamsChannelLayer",
        "CONFIG": {
            "hosts": [
                os.environ.get("CHANNELS_LITE_REDIS_URL")
                or os.environ.get("REDIS_URL")
                or "redis://127.0.0.1:6379/0"
            ],
            "prefix": os.environ.get("CHANNELS_LITE_PREFIX") or "asgi",
        },
    }
}
