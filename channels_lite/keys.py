"""Redis key names, in one place (arq's ``constants.py`` habit).

Every key starts with the configured prefix (``asgi`` by default, as in
channels_redis), so one Redis can host several deployments and ``flush`` can
find everything that is ours with one ``SCAN MATCH``.
"""

from __future__ import annotations


def channel_stream(prefix: str, non_local_name: str) -> str:
    """Stream holding the messages of a channel (or of all ``name!*`` channels)."""
    return f"{prefix}:ch:{non_local_name}"


def group_set(prefix: str, group: str) -> str:
    """Sorted set of a group's member channels, scored by when they were added (ms)."""
    return f"{prefix}:grp:{group}"


def pattern(prefix: str) -> str:
    """``SCAN MATCH`` pattern covering every key of this prefix."""
    return f"{prefix}:*"


def connect_stream(prefix: str) -> str:
    """The shared stream of new connections, read by the workers' consumer group."""
    return f"{prefix}:connect"


#: Consumer group of the workers on :func:`connect_stream`.
WORKERS_GROUP = "workers"


def heartbeat(prefix: str, role: str, process_id: str) -> str:
    """Key a live process refreshes with a TTL; its absence means the process is gone."""
    return f"{prefix}:hb:{role}:{process_id}"


def task_stream(prefix: str, channel: str) -> str:
    """The stream of a background-task channel, read by the workers' group."""
    return f"{prefix}:task:{channel}"


#: Consumer group of the workers on every :func:`task_stream`.
TASKS_GROUP = "tasks"


def dead_letters(prefix: str) -> str:
    """The stream of entries that could not be processed, with why."""
    return f"{prefix}:dead"


def task_delayed(prefix: str) -> str:
    """Sorted set of task retries waiting for their backoff, scored by due time (ms)."""
    return f"{prefix}:task-delayed"
