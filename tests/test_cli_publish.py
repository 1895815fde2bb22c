"""``channels-lite publish``, ``enqueue`` and ``dead-letters``, run as a user runs them.

Why: these commands are how shell scripts, cron jobs and operators reach a
deployment, so their contract is the process's: what lands in Redis, what
is printed, and the exit code (0 done, 1 runtime failure, 2 usage error),
with every failure one line and never a traceback. Behaviour is tested on
real subprocesses against a real Redis; only pure argument errors use
click's CliRunner.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis
from click.testing import CliRunner

from channels_lite import RedisStreamsChannelLayer, keys, wire
from channels_lite.cli import main


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHANNELS_LITE_") and k != "REDIS_URL"
    }
    return subprocess.run(
        [sys.executable, "-m", "channels_lite", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


# --------------------------------------------------------------------------
# publish / enqueue


@pytest.mark.anyio
async def test_publish_to_a_group_reaches_its_members(redis_url: str) -> None:
    layer = RedisStreamsChannelLayer(hosts=[redis_url])
    try:
        channel = await layer.new_channel()
        await layer.group_add("chat", channel)
        message = {"type": "chat.message", "text": "héllo", "n": 2**70, "nested": [1, None]}
        result = await anyio.to_thread.run_sync(
            functools.partial(
                cli, "publish", "--redis-url", redis_url, "--group", "chat", json.dumps(message)
            )
        )
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        with anyio.fail_after(5):
            assert await layer.receive(channel) == message
    finally:
        await layer.close()


def test_publish_to_a_channel_with_prefix(redis_url: str, raw: redis.Redis) -> None:
    result = cli(
        "publish", "--redis-url", redis_url, "--prefix", "svc", "--channel", "inbox",
        '{"type": "note", "text": "aGk="}',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ((_, fields),) = raw.xrange(keys.channel_stream("svc", "inbox"))
    # JSON has no bytes: a base64-looking string stays a string.
    assert wire.decode(fields) == wire.ChannelMessage(("inbox",), {"type": "note", "text": "aGk="})


def test_publish_respects_capacity(redis_url: str) -> None:
    args = (
        "publish",
        "--redis-url",
        redis_url,
        "--capacity",
        "1",
        "--channel",
        "c",
        '{"type": "m"}',
    )
    assert cli(*args).returncode == 0
    line = assert_one_error_line(cli(*args), 1)
    assert "capacity" in line


def test_enqueue_prints_the_entry_id(redis_url: str, raw: redis.Redis) -> None:
    result = cli("enqueue", "--redis-url", redis_url, "emails", '{"type": "email.send", "to": "x"}')
    assert result.returncode == 0, result.stderr
    ((entry_id, fields),) = raw.xrange(keys.task_stream("asgi", "emails"))
    assert result.stdout == entry_id.decode() + "\n"
    assert wire.decode(fields) == wire.Task("emails", {"type": "email.send", "to": "x"})


def test_message_from_file_and_stdin(redis_url: str, raw: redis.Redis, tmp_path: Path) -> None:
    path = tmp_path / "task.json"
    path.write_text('{"type": "from.file", "list": [1, 2]}')
    assert cli("enqueue", "--redis-url", redis_url, "jobs", f"@{path}").returncode == 0
    result = cli("enqueue", "--redis-url", redis_url, "jobs", "-", stdin='{"type": "from.stdin"}')
    assert result.returncode == 0, result.stderr
    tasks = [wire.decode(f) for _, f in raw.xrange(keys.task_stream("asgi", "jobs"))]
    assert tasks == [
        wire.Task("jobs", {"type": "from.file", "list": [1, 2]}),
        wire.Task("jobs", {"type": "from.stdin"}),
    ]


@pytest.mark.parametrize(
    ("message", "stdin", "expected"),
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "must be a JSON object, not an array"),
        ('"text"', None, "must be a JSON object, not a string"),
        ('{"text": "no type"}', None, 'must have a string "type"'),
        ('{"type": 7}', None, 'must have a string "type"'),
        ("-", "", "stdin is not valid JSON"),
        ("@/nonexistent/message.json", None, "cannot read /nonexistent/message.json"),
    ],
)
def test_bad_message_exits_2_with_one_line(
    redis_url: str, raw: redis.Redis, message: str, stdin: str | None, expected: str
) -> None:
    for command in (["publish", "--channel", "c"], ["enqueue", "jobs"]):
        result = cli(*command, "--redis-url", redis_url, message, stdin=stdin)
        assert expected in assert_one_error_line(result, 2)
    assert raw.keys("*") == []


def test_bad_names_and_settings_exit_2(redis_url: str) -> None:
    for args in (
        ["enqueue", "--redis-url", redis_url, "not!valid", '{"type": "t"}'],
        ["publish", "--redis-url", redis_url, "--group", "bad group", '{"type": "t"}'],
        ["publish", "--redis-url", redis_url, "--prefix", "a b", "--channel", "c", '{"type": "t"}'],
        ["publish", "--redis-url", "http://nowhere", "--channel", "c", '{"type": "t"}'],
        ["publish", "--group", "g", "--channel", "c", '{"type": "t"}'],
    ):
        assert_one_error_line(cli(*args), 2)


def test_unreachable_redis_exits_1_with_one_line() -> None:
    url = unused_url()
    for args in (
        ["publish", "--channel", "c", '{"type": "t"}'],
        ["publish", "--group", "g", '{"type": "t"}'],
        ["enqueue", "jobs", '{"type": "t"}'],
        ["dead-letters", "list"],
        ["dead-letters", "replay", "--all"],
    ):
        result = cli(*args, "--redis-url", url)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr
        assert "Redis unavailable" in errors[0]


def test_env_configures_the_commands(redis_url: str, raw: redis.Redis) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "CHANNELS_LITE_PREFIX": "envp"}
    result = subprocess.run(
        [sys.executable, "-m", "channels_lite", "enqueue", "jobs", '{"type": "t"}'],
        capture_output=True, text=True, timeout=30, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert raw.xlen(keys.task_stream("envp", "jobs")) == 1


def test_argument_errors_exit_2() -> None:
    runner = CliRunner()
    for args in (
        ["publish", '{"type": "t"}'],  # neither --group nor --channel
        ["publish", "--channel"],
        ["enqueue", "jobs"],
        ["dead-letters", "replay"],
        ["dead-letters", "replay", "--all", "1-0"],
        ["dead-letters", "replay", "not-an-id"],
        ["dead-letters", "list", "--limit", "0"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)


# --------------------------------------------------------------------------
# dead-letters


def add_dead_letters(raw: redis.Redis) -> list[tuple[str, dict[bytes, bytes]]]:
    """Three dead letters (a task, a garbage entry, one unreadable), as workers write them."""
    task = wire.encode(wire.Task("emails", {"type": "email.send", "n": 1}, attempts=3))
    garbage = {b"v": b"1", b"k": b"msg", b"\xff": b"\x00\x01\xfe", b"d": b"not msgpack"}
    letters = [
        wire.DeadLetter("asgi:task:emails", "1700000000000-0", task, "ValueError: boom"),
        wire.DeadLetter("asgi:ch:inbox", "1700000000000-1", garbage, "WireError: not msgpack"),
    ]
    ids = [raw.xadd(keys.dead_letters("asgi"), wire.encode(letter)).decode() for letter in letters]
    raw.xadd(keys.dead_letters("asgi"), {b"junk": b"x"})
    return [(ids[0], task), (ids[1], garbage)]


def test_dead_letters_list(redis_url: str, raw: redis.Redis) -> None:
    (task_id, task), (garbage_id, _) = add_dead_letters(raw)
    result = cli("dead-letters", "list", "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    header, first, second, third = result.stdout.splitlines()
    assert header.split() == ["ID", "AGE", "STREAM", "ENTRY", "TYPE", "ERROR"]
    assert first.split()[:1] + first.split()[2:5] == [
        task_id, "asgi:task:emails", "1700000000000-0", "email.send"
    ]  # fmt: skip
    assert re.fullmatch(r"\d+s", first.split()[1])  # the age, seconds at this point
    assert first.endswith("ValueError: boom")
    assert second.split()[:1] + second.split()[2:5] == [
        garbage_id, "asgi:ch:inbox", "1700000000000-1", "-"
    ]  # fmt: skip
    assert "unreadable dead letter" in third
    assert result.stderr == "3 of 3 dead letter(s) shown\n"

    result = cli("dead-letters", "list", "--redis-url", redis_url, "--json", "--limit", "2")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    assert [row["id"] for row in rows] == [task_id, garbage_id]
    assert rows[0]["stream"] == "asgi:task:emails"
    assert rows[0]["entry_id"] == "1700000000000-0"
    assert rows[0]["type"] == "email.send"
    assert rows[0]["error"] == "ValueError: boom"
    assert rows[0]["size"] == sum(len(k) + len(v) for k, v in task.items())
    assert 0 <= rows[0]["age"] < 10
    assert rows[1]["type"] is None
    assert result.stderr == "2 of 3 dead letter(s) shown\n"


def test_dead_letters_replay_by_id(redis_url: str, raw: redis.Redis) -> None:
    (task_id, task), (garbage_id, garbage) = add_dead_letters(raw)
    raw.xgroup_create(keys.task_stream("asgi", "emails"), keys.TASKS_GROUP, id="0", mkstream=True)
    result = cli("dead-letters", "replay", "--redis-url", redis_url, task_id, garbage_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "replayed 2 dead letter(s)\n"
    # Byte for byte, field order included, garbage too.
    ((_, fields),) = raw.xrange(keys.task_stream("asgi", "emails"))
    assert list(fields.items()) == list(task.items())
    ((_, fields),) = raw.xrange(keys.channel_stream("asgi", "inbox"))
    assert list(fields.items()) == list(garbage.items())
    assert raw.pttl(keys.channel_stream("asgi", "inbox")) > 0  # channel streams expire
    assert raw.xlen(keys.dead_letters("asgi")) == 1  # only the unreadable one is left

    again = cli("dead-letters", "replay", "--redis-url", redis_url, task_id)
    assert again.returncode == 1
    assert again.stdout == "replayed 0 dead letter(s)\n"
    assert again.stderr == f"not found: {task_id}\n"
    assert raw.xlen(keys.task_stream("asgi", "emails")) == 1


def test_dead_letters_replay_all(redis_url: str, raw: redis.Redis) -> None:
    add_dead_letters(raw)
    outside = wire.DeadLetter("elsewhere:stream", "1-0", {b"a": b"b"}, "x")
    outside_id = raw.xadd(keys.dead_letters("asgi"), wire.encode(outside)).decode()
    for i in range(250):  # more than one page
        task = wire.encode(wire.Task("bulk", {"type": "t", "i": i}))
        raw.xadd(
            keys.dead_letters("asgi"),
            wire.encode(wire.DeadLetter("asgi:task:bulk", "1-0", task, "e")),
        )
    result = cli("dead-letters", "replay", "--redis-url", redis_url, "--all")
    assert result.returncode == 1  # two could not be replayed, and it says so
    assert result.stdout == "replayed 252 dead letter(s)\n"
    reasons = result.stderr.splitlines()
    assert len(reasons) == 2
    assert reasons[0].startswith("not replayed: ")
    assert "unreadable dead letter" in reasons[0]
    assert reasons[1] == (
        f"not replayed: {outside_id}: stream 'elsewhere:stream' is outside the prefix 'asgi'"
    )
    bulk = [wire.decode(f) for _, f in raw.xrange(keys.task_stream("asgi", "bulk"))]
    assert [t.message["i"] for t in bulk if isinstance(t, wire.Task)] == list(range(250))
    assert raw.xlen(keys.dead_letters("asgi")) == 2
    assert not raw.exists("elsewhere:stream")


def test_dead_letters_replay_into_a_non_stream(redis_url: str, raw: redis.Redis) -> None:
    raw.set("asgi:task:broken", "a string, not a stream")
    letter = wire.DeadLetter("asgi:task:broken", "1-0", {b"a": b"b"}, "e")
    dead_id = raw.xadd(keys.dead_letters("asgi"), wire.encode(letter)).decode()
    result = cli("dead-letters", "replay", "--redis-url", redis_url, dead_id)
    assert result.returncode == 1
    assert result.stderr == f"not replayed: {dead_id}: 'asgi:task:broken' is not a stream\n"
    assert raw.xlen(keys.dead_letters("asgi")) == 1  # still there: nothing lost


def test_dead_letters_replay_an_oversized_entry(redis_url: str, raw: redis.Redis) -> None:
    # Workers move an oversized entry aside whole; it must list and replay whole.
    huge = {b"v": b"1", b"k": b"task", b"d": b"\x00" * (2 * 1024 * 1024)}
    letter = wire.DeadLetter("asgi:task:big", "1-0", huge, "WireError: too large")
    dead_id = raw.xadd(keys.dead_letters("asgi"), wire.encode(letter, max_size=sys.maxsize))
    listed = cli("dead-letters", "list", "--redis-url", redis_url, "--json")
    assert json.loads(listed.stdout)[0]["stream"] == "asgi:task:big"
    result = cli("dead-letters", "replay", "--redis-url", redis_url, dead_id.decode())
    assert result.returncode == 0, result.stderr
    ((_, fields),) = raw.xrange(keys.task_stream("asgi", "big"))
    assert fields == huge
