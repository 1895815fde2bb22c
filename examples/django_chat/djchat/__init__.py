"""The Django Channels chat example: see ``djchat.asgi``."""
