"""A minimal Django project for the framework tests (``DJANGO_SETTINGS_MODULE=djproject.settings``).

``djproject.asgi:application`` is plain Django (``get_asgi_application()``);
``djproject.channels_asgi:application`` is a Channels ``ProtocolTypeRouter``
with WebSocket consumers and a channel layer on our Redis Streams backend.
"""
