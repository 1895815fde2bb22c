"""Default logging for our processes (never applied by library code).

Each process entry point calls :func:`configure` once; importing the library
configures nothing. ``TRACE`` (level 5) is for per-message wire dumps.

Two formats: ``text`` (one human line per record) and ``json`` (one object
per line for log shippers: ``time``, ``level``, ``logger``, ``message``, the
record's extras such as the access log's ``method``/``path``/``status``, a
``conn`` for lines about a connection, and ``exc_info`` as a string).

The protocol server writes its own access log (``protocol_server.access``,
one line per HTTP request with the worker that served it), so uvicorn's
``uvicorn.access`` is silenced here to avoid a second line per request.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
import re
from typing import Any, Final

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

FORMATS: Final = ("text", "json")

# Attributes every LogRecord has: anything else came in through ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}  # uvicorn's ANSI copy of the message
)
_CONN_RE: Final = re.compile(r"\bconn (\S+?):?(?:\s|$)")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        data: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        match = _CONN_RE.search(message)
        if match:
            data["conn"] = match[1]
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str)


def default_log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A dictConfig: one line per record on stderr, as text or JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    level = level.upper()
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "": {"handlers": ["default"], "level": level},
            "uvicorn.error": {"level": level},
            # Replaced by ``protocol_server.access`` (see the module docstring).
            "uvicorn.access": {"level": "WARNING"},
        },
    }


def configure(level: str = "info", fmt: str = "text") -> None:
    """Apply :func:`default_log_config`."""
    logging.config.dictConfig(default_log_config(level, fmt))
