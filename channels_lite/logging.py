"""Default logging for our processes (never applied by library code).

Each process entry point calls :func:`configure` once; importing the library
configures nothing. ``TRACE`` (level 5) is for per-message wire dumps.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")


def default_log_config(level: str = "info") -> dict[str, Any]:
    """A dictConfig: one line per record on stderr, uvicorn-style access log."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"},
        },
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
            "uvicorn.access": {"level": level},
        },
    }


def configure(level: str = "info") -> None:
    """Apply :func:`default_log_config`."""
    logging.config.dictConfig(default_log_config(level))
