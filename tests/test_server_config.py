"""``protocol_server.config.Config.from_env``: the CLI's settings without a CLI.

What hosts the gateway under another ASGI server (``protocol_server.asgi``)
reads the same ``CHANNELS_LITE_*`` names as ``channels-lite protocol-server``.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from channels_lite.cli import protocol_server_cmd
from channels_lite.exceptions import ConfigError
from protocol_server.config import Config


def test_every_cli_option_reads_the_variable_from_env_reads() -> None:
    cli_envvars = {
        name for param in protocol_server_cmd.params for name in (param.envvar or ()) if name
    }
    fields = [f.name for f in dataclasses.fields(Config) if f.init]
    for name in fields:
        assert f"CHANNELS_LITE_{name.upper()}" in cli_envvars
    assert "REDIS_URL" in cli_envvars


def test_values_are_read_and_typed() -> None:
    config = Config.from_env(
        {
            "CHANNELS_LITE_REDIS_URL": "redis://example:6380/2",
            "CHANNELS_LITE_PREFIX": "site",
            "CHANNELS_LITE_FLOW_WINDOW": "65536",
            "CHANNELS_LITE_QUEUE_TIMEOUT": "2.5",
            "CHANNELS_LITE_SERVER_ID": "edge-1",
            "CHANNELS_LITE_WS_PER_MESSAGE_DEFLATE": "false",
            "UNRELATED": "x",
        }
    )
    assert config.ws_per_message_deflate is False
    assert config.redis_url == "redis://example:6380/2"
    assert config.prefix == "site"
    assert config.flow_window == 65536
    assert config.queue_timeout == 2.5
    assert config.server_id == "edge-1"
    assert config.max_body_size == Config().max_body_size  # unset: the default


def test_unset_and_empty_keep_the_defaults() -> None:
    assert Config.from_env({}) == Config()
    assert Config.from_env({"CHANNELS_LITE_PREFIX": ""}) == Config()


def test_redis_url_falls_back_to_REDIS_URL() -> None:
    assert Config.from_env({"REDIS_URL": "redis://a/0"}).redis_url == "redis://a/0"
    both = {"REDIS_URL": "redis://a/0", "CHANNELS_LITE_REDIS_URL": "redis://b/0"}
    assert Config.from_env(both).redis_url == "redis://b/0"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CHANNELS_LITE_FLOW_WINDOW", "1MiB", "CHANNELS_LITE_FLOW_WINDOW must be int"),
        ("CHANNELS_LITE_QUEUE_TIMEOUT", "soon", "CHANNELS_LITE_QUEUE_TIMEOUT must be float"),
        ("CHANNELS_LITE_FLOW_WINDOW", "0", "flow_window must be positive"),
        ("CHANNELS_LITE_WS_PER_MESSAGE_DEFLATE", "maybe", "must be bool"),
    ],
)
def test_bad_values_are_config_errors(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({name: value})


def test_the_asgi_module_builds_its_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHANNELS_LITE_PREFIX", "from-env")
    monkeypatch.setenv("CHANNELS_LITE_SERVER_ID", "ps-env")
    import protocol_server.asgi as asgi

    asgi = importlib.reload(asgi)
    assert asgi.app.config.prefix == "from-env"
    assert asgi.app.server_id == "ps-env"
    assert asgi.create_app(Config(prefix="given")).config.prefix == "given"


@pytest.mark.parametrize("server_id", ["a.b", "has space", "x" * 41, "ünï"])
def test_server_id_must_fit_in_channel_names(server_id: str) -> None:
    # It names the server's channels (ps.<server_id>.<...>!<...>): refused
    # at start-up rather than failing every request.
    with pytest.raises(ConfigError, match="server_id must be"):
        Config(server_id=server_id)
    assert Config(server_id="edge-1_a").server_id == "edge-1_a"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[("true", True), ("1", True), ("Yes", True), ("on", True)],
        *[("false", False), ("0", False), ("no", False), ("OFF", False)],
    ],
)
def test_booleans_read_as_the_cli_reads_them(
    monkeypatch: pytest.MonkeyPatch, raw: str, value: bool
) -> None:
    # Not bool(raw), for which "false" is true: the words click accepts for
    # the option's variable, so the gateway under another server agrees.
    variable = "CHANNELS_LITE_WS_PER_MESSAGE_DEFLATE"
    assert Config.from_env({variable: raw}).ws_per_message_deflate is value
    monkeypatch.setenv(variable, raw)
    with protocol_server_cmd.make_context("protocol-server", []) as ctx:
        assert ctx.params["ws_per_message_deflate"] is value
