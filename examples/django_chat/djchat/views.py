"""The page (the one both chat examples serve) and a plain-text hello."""

from __future__ import annotations

import os
from pathlib import Path

from django.http import HttpRequest, HttpResponse

# examples/chat.html, next to this project's folder.
PAGE = (Path(__file__).resolve().parents[2] / "chat.html").read_text()


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def hello(request: HttpRequest) -> HttpResponse:
    text = f"Hello from Django Channels on worker {os.getpid()}\n"
    return HttpResponse(text, content_type="text/plain; charset=utf-8")
