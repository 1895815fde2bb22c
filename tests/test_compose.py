"""docker-compose.yml, proved without Docker.

Docker cannot run where this suite runs, so the compose file is checked two
ways. Statically: every ``CHANNELS_LITE_*`` variable is a setting the
service's command reads, every stop grace period exceeds the shutdown timeout,
the worker can be scaled, the services have health checks, the Dockerfile
copies what the file refers to. Live: each service's command and environment
run as local processes (the protocol server, two workers as with
``--scale worker=2``, the publisher) against the test's Redis, and the example
app answers through them: the page over HTTP, the publisher's broadcast over
a WebSocket on ``/chat``; the health checks pass, then fail once stopped.

The only changes from the file are the explicit rewrites in ``_local``: the
``redis`` host becomes the test's Redis, ``/app/`` (the image's directory)
becomes the repository, port 8000 becomes a free one and ``python`` this
interpreter. ``${NAME:-default}`` takes its default, a name with no value is
left unset, as Docker does when neither the shell nor a .env file sets it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import yaml
from websockets.sync.client import connect

from channels_lite.cli import main as cli_main
from channels_lite.config import PublisherConfig
from protocol_server.config import Config as ServerConfig
from tests.e2e._procs import Process
from worker.config import Config as WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_REDIS_URL = "redis://redis:6379/0"
IMAGE_DIR = "/app/"  # the Dockerfile's WORKDIR: examples/ and docker/ are copied there
CONTAINER_PORT = "8000"
_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+):-(?P<default>[^}]*)\}")
_LISTENING = re.compile(r"listening on [^\s:]+:(?P<port>\d+)")


def _interpolate(value: Any) -> Any:
    """Compose's ``${NAME:-default}`` with nothing set: the default."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m["default"], value)
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    text = COMPOSE_FILE.read_text()
    bare = [m for m in re.findall(r"\$\{?[^}\s]*\}?", text) if not _INTERPOLATION.fullmatch(m)]
    assert not bare, f"every interpolation needs a default (${{NAME:-default}}): {bare}"
    result: dict[str, dict[str, Any]] = _interpolate(yaml.safe_load(text))["services"]
    return result


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The variables Docker would set: those with a value (no shell, no .env)."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, please"
    return {k: str(v) for k, v in env.items() if v is not None}


def _duration(text: str) -> float:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", str(text))
    assert text, "an empty duration"
    assert parts, f"not a duration: {text!r}"
    return int(parts[1] or 0) * 60 + float(parts[2] or 0)


def _click_envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = param.envvar
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def _settings(service: dict[str, Any]) -> tuple[type, set[str]]:
    """The Config class of what the service runs, and the variables it reads."""
    argv = [*(service.get("entrypoint") or ["channels-lite"]), *service.get("command", [])]
    if argv[0] == "channels-lite":
        cls = {"protocol-server": ServerConfig, "worker": WorkerConfig}[argv[1]]
        assert isinstance(cli_main, click.Group)
        cli_names = _click_envvars(cli_main.commands[argv[1]])
    else:  # a script on channels_lite.Publisher: PublisherConfig.from_env
        assert argv[1] == f"{IMAGE_DIR}examples/publisher.py"
        cls, cli_names = PublisherConfig, set()
    fields = {f"CHANNELS_LITE_{f.name.upper()}" for f in dataclasses.fields(cls) if f.init}
    return cls, fields | cli_names | {"REDIS_URL"}


# --- the file ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["protocol-server", "worker", "publisher"])
def test_every_variable_is_a_setting_of_the_command(services, name, monkeypatch):
    service = services[name]
    cls, known = _settings(service)
    ours = {k for k in service["environment"] if k.startswith("CHANNELS_LITE_") or k == "REDIS_URL"}
    assert ours - known == set(), f"{name}: not settings of {cls.__module__}.{cls.__name__}"
    env = _environment(service)
    assert env["CHANNELS_LITE_REDIS_URL"] == COMPOSE_REDIS_URL
    # ... and the command accepts the values, as it would parse them.
    for key in [k for k in os.environ if k.startswith("CHANNELS_LITE_") or k == "REDIS_URL"]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if cls is PublisherConfig:
        config = PublisherConfig.from_env()
    else:
        assert isinstance(cli_main, click.Group)
        command = cli_main.commands[service["command"][0]]
        params = command.make_context(name, list(service["command"][1:])).params
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        config = cls(**{k: v for k, v in params.items() if k in fields})  # not --log-level
    assert config.redis_url == COMPOSE_REDIS_URL


@pytest.mark.parametrize("name", ["protocol-server", "worker"])
def test_stop_grace_period_outlasts_the_shutdown_timeout(services, name):
    service = services[name]
    timeout = float(_environment(service)["CHANNELS_LITE_SHUTDOWN_TIMEOUT"])
    grace = _duration(service["stop_grace_period"])
    assert grace >= timeout + 5, f"{name}: SIGKILL {grace}s after SIGTERM, drain takes {timeout}s"


def test_worker_can_be_scaled(services):
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker  # the health check tells replicas apart by hostname


def test_health_checks_and_start_order(services):
    for name in ("redis", "protocol-server", "worker"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("protocol-server", "worker", "publisher"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["protocol-server"]["ports"] == [f"{CONTAINER_PORT}:{CONTAINER_PORT}"]
    assert services["redis"]["image"].startswith("redis:7")


def test_dockerfile_provides_what_the_compose_file_uses(services):
    text = "\n".join(
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()  # continuation lines joined
    directives = [line.strip().split(None, 1) for line in lines if line.strip()]
    assert ["ENTRYPOINT", '["channels-lite"]'] in directives
    users = [arg for op, arg in directives if op == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    workdirs = [arg for op, arg in directives if op == "WORKDIR"]
    assert workdirs[-1] == IMAGE_DIR.rstrip("/"), "examples/ and docker/ are copied to /app"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    copied = []
    for op, arg in directives:
        if op == "COPY":
            *sources, target = arg.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source.rstrip('/')}" in ignored, f"{source}: not in the build context"
            copied.append(target)
    # Every /app/ path of the compose file is in the image.
    used = re.findall(re.escape(IMAGE_DIR) + r"([\w/.]+)", json.dumps(services))
    for path in used:
        assert any(path.startswith(target.rstrip("/")) for target in copied), path
        assert (ROOT / path).exists(), path


# --- the services, as local processes -------------------------------------------


class Service(Process):
    """One compose service as a local process: its entrypoint, command and environment."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(argv[1:])
        self.program = argv[0]
        # Docker passes only the service's environment: drop the test's own settings.
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHANNELS_LITE_")}
        base.pop("REDIS_URL", None)
        self.env = {**base, "PYTHONUNBUFFERED": "1", **env}

    def argv(self) -> list[str]:
        if self.program == "channels-lite":
            return [sys.executable, "-m", "channels_lite", *self.args]
        return [self.program, *self.args]


def _local(value: str, redis_url: str, port: str) -> str:
    """The rewrites from the containers to this machine, and nothing else."""
    if value == "python":
        return sys.executable
    value = value.replace(COMPOSE_REDIS_URL, redis_url)
    value = value.replace(IMAGE_DIR, f"{ROOT}/")
    if value == f"0.0.0.0:{CONTAINER_PORT}":  # --bind
        return f"127.0.0.1:{port}"
    if value == CONTAINER_PORT:  # the health check's --port
        return port
    return value


def _service(service: dict[str, Any], redis_url: str, port: str = "0") -> Service:
    argv = [*(service.get("entrypoint") or ["channels-lite"]), *service["command"]]
    env = {k: _local(v, redis_url, port) for k, v in _environment(service).items()}
    return Service([_local(a, redis_url, port) for a in argv], env)


def _health(service: dict[str, Any], env: dict[str, str], redis_url: str, port: str) -> int:
    """Run the service's health check (``CMD`` form) as Docker would, inside it."""
    kind, *argv = service["healthcheck"]["test"]
    assert kind == "CMD"
    result = subprocess.run(
        [_local(a, redis_url, port) for a in argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    print(f"healthcheck {argv}: {result.returncode} {result.stdout}{result.stderr}")
    return result.returncode


@pytest.fixture
def started() -> Iterator[list[Service]]:
    processes: list[Service] = []
    yield processes
    processes[:] = [p for p in processes if p.proc is not None]  # started, at least
    for process in processes:
        process.signal(signal.SIGTERM)
    codes = []
    for process in processes:
        try:
            process.wait(20)
        finally:
            codes.append(process.stop())  # SIGKILL only if still running
    for process, code in zip(processes, codes, strict=True):
        if code != 0:
            print(f"--- {process.args} exited {code} ---\n{process.log()}")
    assert codes == [0] * len(processes), "every service stops cleanly on SIGTERM"


def test_services_serve_the_example_app(services, redis_url, started):
    server = _service(services["protocol-server"], redis_url)
    started.append(server)
    port = server.start(_LISTENING)["port"]
    workers = [_service(services["worker"], redis_url) for _ in range(2)]  # --scale worker=2
    for worker in workers:
        started.append(worker)
        worker.start(r"serving starlette_chat:app")
    publisher = _service(services["publisher"], redis_url)
    started.append(publisher)
    publisher.start(r"publishing to group 'chat-lobby'")

    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert response.status_code == 200
    assert "<title>channels-lite chat</title>" in response.text

    with connect(f"ws://127.0.0.1:{port}/ws/chat/lobby/?name=t", open_timeout=10) as ws:
        # Joined the room: the publisher's next tick (every 3 s) reaches this socket.
        while (event := json.loads(ws.recv(timeout=10)))["type"] != "message":
            assert event["type"] in ("welcome", "join"), event
        assert event["name"] == "publisher"
        assert event["text"].startswith("it is ")

    for name, process in (("protocol-server", server), ("worker", workers[0])):
        assert _health(services[name], process.env, redis_url, port) == 0, name

    # Stopped, they are unhealthy: the checks look at something real.
    for process in started:
        process.signal(signal.SIGTERM)
    for process in started:
        assert process.wait(20) == 0, process.log()
    for name, process in (("protocol-server", server), ("worker", workers[0])):
        assert _health(services[name], process.env, redis_url, port) == 1, name
