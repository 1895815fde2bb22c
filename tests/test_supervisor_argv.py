"""The command lines ``channels-lite run`` starts its processes with.

Why: every setting reaches a child as the option the child's CLI defines
(channels_lite/_cli_options.py), and a boolean setting is a ``--x/--no-x``
flag there, which takes no value: ``--x False`` would be refused and the
child would not start. Checked against the real CLI, not a copy of its rules.
"""

from __future__ import annotations

import sys

import click
import pytest

from channels_lite.cli import main
from channels_lite.supervisor.supervisor import _argv


def test_values_and_flags_become_options_the_child_cli_accepts() -> None:
    argv = _argv(
        "protocol-server",
        {"bind": "127.0.0.1:0", "queue_timeout": 2.5, "ws_per_message_deflate": False},
    )
    assert argv[:4] == [sys.executable, "-m", "channels_lite", "protocol-server"]
    assert argv[4:] == [
        "--bind",
        "127.0.0.1:0",
        "--queue-timeout",
        "2.5",
        "--no-ws-per-message-deflate",
    ]
    assert _argv("protocol-server", {"ws_per_message_deflate": True})[4:] == [
        "--ws-per-message-deflate"
    ]
    # The child's own parser takes them: parsed and checked, not run.
    command = main.commands["protocol-server"]
    context = command.make_context("protocol-server", argv[4:])
    assert context.params["ws_per_message_deflate"] is False
    assert context.params["queue_timeout"] == 2.5
    # Which "--x False" is not: the value is left over as an argument.
    with pytest.raises(click.UsageError):
        command.make_context("protocol-server", ["--ws-per-message-deflate", "False"])


def test_the_app_comes_first() -> None:
    argv = _argv("worker", {"app": "pkg.mod:app", "concurrency": 4})
    assert argv[3:] == ["worker", "pkg.mod:app", "--concurrency", "4"]
