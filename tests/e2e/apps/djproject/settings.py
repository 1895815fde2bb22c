"""Settings for the test project: no database, no templates, no static files.

The channel layer is ours, on the Redis at ``REDIS_URL``; ``CHANNEL_LAYER_PREFIX``
keeps two deployments on one Redis apart.
"""

from __future__ import annotations

import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "djproject.urls"
INSTALLED_APPS = ["channels"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
TIME_ZONE = "UTC"
USE_TZ = True
APPEND_SLASH = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_lite.layer.RedisStreamsChannelLayer",
        "CONFIG": {
            "hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")],
            "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "asgi"),
        },
    }
}
