"""The two chat examples under ``examples/``, as the end-to-end tests run them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass(frozen=True)
class ChatExample:
    """One chat app: what ``channels-lite worker`` runs, and what its pages say."""

    id: str
    app: str
    app_dir: Path
    framework: str  # as the welcome event and /hello name it

    def worker_args(self, *extra: str) -> tuple[str, ...]:
        return ("--app-dir", str(self.app_dir), *extra)


CHAT_EXAMPLES = [
    ChatExample("starlette", "starlette_chat:app", EXAMPLES, "Starlette"),
    ChatExample("django", "djchat.asgi:application", EXAMPLES / "django_chat", "Django Channels"),
]
