"""The chat examples (``examples/starlette_chat.py``, ``examples/django_chat``) end to end.

Why: they are what a newcomer runs first and copies from, and the README's
tour pastes commands against them. Each runs unchanged on a deployment of one
protocol server and two workers: the page and ``/hello`` over HTTP; rooms,
names, join and leave notices over WebSockets, across workers; a bad frame
answered with an error on a socket that stays usable; and a message published
from outside with ``channels-lite publish``, which reaches the room's members
and no one else. The browser does the same in ``test_browser_chat.py``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests._redis import unused_port

from ._examples import CHAT_EXAMPLES, ChatExample
from ._procs import Process
from ._shared import own_logs_on_failure, shared_deployment
from .conftest import Deployment


@pytest.fixture(scope="module", params=CHAT_EXAMPLES, ids=lambda e: e.id)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ChatExample, Deployment]]:
    example: ChatExample = request.param
    directory = tmp_path_factory.mktemp(example.id)
    with shared_deployment(directory, example.app, worker_args=example.worker_args()) as pair:
        yield example, pair[0]


@pytest.fixture
def chat(
    shared: tuple[ChatExample, Deployment], request: pytest.FixtureRequest
) -> Iterator[tuple[ChatExample, Deployment]]:
    with own_logs_on_failure(shared[1], request):
        yield shared


def join(deployment: Deployment, room: str, name: str) -> ClientConnection:
    """A chat socket, as the page opens it (Django checks the Origin, as a browser sends it)."""
    url = f"{deployment.ws_url}/ws/chat/{room}/?name={name}"
    return connect(url, origin=deployment.url, open_timeout=10, close_timeout=5, proxy=None)


def publish(redis_url: str, group: str, message: dict[str, Any]) -> None:
    """``channels-lite publish --group GROUP MESSAGE``, as the README shows it."""
    argv = [sys.executable, "-m", "channels_lite", "publish", "--redis-url", redis_url]
    argv += ["--group", group, json.dumps(message)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def recv(ws: ClientConnection) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return data


def recv_skipping_notices(ws: ClientConnection) -> dict[str, Any]:
    """The next event that is not someone joining or leaving."""
    while (event := recv(ws))["type"] in ("join", "leave"):
        pass
    return event


def test_page_and_hello_over_http(chat: tuple[ChatExample, Deployment]) -> None:
    example, deployment = chat
    page = httpx.get(deployment.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == (Path(__file__).parents[2] / "examples" / "chat.html").read_text()
    hello = httpx.get(deployment.url + "/hello", timeout=10)
    assert hello.status_code == 200
    prefix = f"Hello from {example.framework} on worker "
    assert hello.text.startswith(prefix)
    assert int(hello.text.removeprefix(prefix)) in {w.pid for w in deployment.workers}


def test_rooms_names_and_notices(chat: tuple[ChatExample, Deployment]) -> None:
    example, deployment = chat
    with join(deployment, "lobby", "alice") as alice:
        welcome = recv(alice)
        assert welcome == {
            "type": "welcome",
            "room": "lobby",
            "name": "alice",
            "worker": welcome["worker"],
            "framework": example.framework,
        }
        assert welcome["worker"] in {w.pid for w in deployment.workers}
        assert recv(alice) == {"type": "join", "name": "alice", "worker": welcome["worker"]}
        bob = join(deployment, "lobby", "bob%20%20smith")
        with bob, join(deployment, "ops", "eve") as eve:
            assert recv(bob)["name"] == "bob smith"  # spaces collapsed
            assert recv(bob)["type"] == "join"
            assert recv(alice)["name"] == "bob smith"  # bob joined
            assert recv(eve)["room"] == "ops"
            assert recv(eve)["name"] == "eve"  # her own join: nothing from the lobby

            alice.send(json.dumps({"text": "hello, lobby"}))
            for ws in (alice, bob):
                message = recv(ws)
                assert message == {
                    "type": "message",
                    "name": "alice",
                    "text": "hello, lobby",
                    "worker": welcome["worker"],
                }
            eve.send(json.dumps({"text": "ops only"}))
            # eve's next message is her own: the lobby's never reached her room.
            assert recv(eve)["text"] == "ops only"
        # bob and eve left: alice hears of bob only.
        assert recv(alice) == {"type": "leave", "name": "bob smith"}
        alice.send(json.dumps({"text": "still here"}))
        assert recv(alice)["text"] == "still here"


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ("hello", "not JSON"),
        (json.dumps({"text": ""}), "non-empty string"),
        (json.dumps(["text"]), "non-empty string"),
        (json.dumps({"text": "x" * 2001}), "at most 2000"),
        (b"\x00binary", "text frames"),
    ],
)
def test_bad_frame_gets_an_error_and_the_socket_stays(
    chat: tuple[ChatExample, Deployment], frame: str | bytes, error: str
) -> None:
    _, deployment = chat
    with join(deployment, "errors", "mallory") as ws:
        assert [recv(ws)["type"], recv(ws)["type"]] == ["welcome", "join"]
        ws.send(frame)
        reply = recv_skipping_notices(ws)  # the previous case's mallory may be leaving
        assert reply["type"] == "error"
        assert error in reply["error"]
        ws.send(json.dumps({"text": "after the error"}))
        assert recv_skipping_notices(ws)["text"] == "after the error"


def test_bad_room_is_refused(chat: tuple[ChatExample, Deployment]) -> None:
    _, deployment = chat
    with pytest.raises(InvalidStatus) as refused, join(deployment, "no.dots", "x"):
        pass
    assert refused.value.response.status_code in (403, 404)


def test_publish_from_outside_reaches_the_room(chat: tuple[ChatExample, Deployment]) -> None:
    _, deployment = chat
    with join(deployment, "news", "reader") as reader, join(deployment, "other", "x") as other:
        for ws in (reader, other):
            assert [recv(ws)["type"], recv(ws)["type"]] == ["welcome", "join"]
        message = {"type": "chat.message", "name": "ops", "text": "deploy at five"}
        publish(deployment.redis_url, "chat-news", message)
        assert recv(reader) == {
            "type": "message",
            "name": "ops",
            "text": "deploy at five",
            "worker": None,
        }
        other.send(json.dumps({"text": "mine"}))
        assert recv(other)["text"] == "mine"  # the news never came here


def test_django_chat_under_run_with_the_embedded_broker() -> None:
    # `channels-lite run` starts its broker on a temporary socket that the
    # Django settings cannot know: the workers tell them (CHANNELS_LITE_REDIS_URL),
    # so the consumers, the workers and an outside publisher share the room.
    example = CHAT_EXAMPLES[1]
    port = unused_port()
    env = {"REDIS_URL": "", "CHANNELS_LITE_REDIS_URL": "", "CHANNELS_LITE_EMBEDDED": ""}
    run = Process(
        ["run", example.app, "--app-dir", str(example.app_dir), "--bind", f"127.0.0.1:{port}"],
        env=env,
    )
    try:
        broker = run.start(r"broker: embedded .*\((?P<url>unix://\S+)\)")["url"]
        run.wait_for(r"listening on ")
        run.wait_for(rf"serving {re.escape(example.app)}")  # one worker is enough
        deployment = Deployment(broker, urls=[f"http://127.0.0.1:{port}"])
        with join(deployment, "lobby", "a") as a:
            while recv(a)["type"] != "join":  # a's own: a is in the room
                pass
            with join(deployment, "lobby", "b") as b:
                for ws in (a, b):
                    while recv(ws) != {"type": "join", "name": "b", "worker": ANY}:
                        pass
                message = {"type": "chat.message", "name": "ops", "text": "hi"}
                publish(broker, "chat-lobby", message)
                for ws in (a, b):
                    assert recv(ws)["text"] == "hi"
                a.send(json.dumps({"text": "from a"}))
                for ws in (a, b):
                    assert recv(ws)["text"] == "from a"
        run.signal(signal.SIGINT)
        assert run.wait(30) == 0, run.log()
    finally:
        run.stop()
