"""Process logging: ``--log-format json`` for log shippers, and the access log.

Why: log shippers parse each line as one JSON object, so every line a
process writes must parse and carry the keys they index on (time, level,
logger, message); the access log is how an operator sees each request with
its status and the worker that served it. Real processes, real Redis.
"""

from __future__ import annotations

import json
import logging
import sys

import httpx
import pytest

from channels_lite.exceptions import ConfigError
from channels_lite.logging import JsonFormatter, default_log_config
from channels_lite.supervisor import RunConfig
from tests.e2e._procs import start_protocol_server, start_worker


def test_json_format_of_a_protocol_server_and_its_access_log(redis_url: str) -> None:
    server, url = start_protocol_server(redis_url, "--log-format", "json")
    try:
        worker = start_worker(redis_url, "echo:app", "--log-format", "json")
        try:
            response = httpx.get(url + "/some/path?x=1", timeout=10)
            assert response.status_code == 200
            server.wait_for("protocol_server.access", timeout=10)
        finally:
            assert worker.stop() == 0
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in server.lines + worker.lines]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    access = [r for r in records if r["logger"] == "protocol_server.access"]
    assert len(access) == 1, server.log()
    (line,) = access
    assert (line["method"], line["path"], line["status"]) == ("GET", "/some/path?x=1", 200)
    assert line["bytes"] == len(response.content)
    assert line["worker"]
    assert line["worker"] in line["message"]
    assert '"GET /some/path?x=1 HTTP/1.1" 200' in line["message"]
    # uvicorn's own access line is replaced by ours, not doubled.
    assert not [r for r in records if r["logger"] == "uvicorn.access"]


def test_json_formatter_extras_conn_and_exc_info() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "worker.connection", logging.ERROR, __file__, 1,
            "conn %s: exception in ASGI application", ("ws.abc!def",), sys.exc_info(),
        )  # fmt: skip
    record.status = 500
    data = json.loads(formatter.format(record))
    assert data["level"] == "ERROR"
    assert data["logger"] == "worker.connection"
    assert data["message"] == "conn ws.abc!def: exception in ASGI application"
    assert data["conn"] == "ws.abc!def"
    assert data["status"] == 500
    assert data["exc_info"].startswith("Traceback")
    assert "ValueError: boom" in data["exc_info"]
    assert "\n" not in formatter.format(record)


def test_bad_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        default_log_config("info", "xml")
    with pytest.raises(ConfigError):
        RunConfig(app="echo:app", log_format="xml")


def test_run_passes_the_log_format_to_its_children(redis_url: str) -> None:
    from tests.e2e._procs import APPS_DIR, Process

    run = Process(
        ["run", "echo:app", "--app-dir", str(APPS_DIR), "--bind", "127.0.0.1:0",
         "--workers", "1", "--redis-url", redis_url, "--log-format", "json"],
    )  # fmt: skip
    try:
        run.start(r"listening on ")
        run.wait_for(r"serving echo:app")
    finally:
        assert run.stop() == 0
    records = [json.loads(line) for line in run.lines]
    loggers = {r["logger"] for r in records}
    assert {"protocol_server.server", "worker.worker"} <= loggers, run.log()
