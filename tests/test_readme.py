"""README.md stays true: its configuration reference and the files it names.

Why: the README is the first thing a newcomer runs commands from. Its
configuration reference is generated from the CLI (``scripts/config_reference.py``,
which reads every option off the click commands built from the Config
dataclasses), so a new setting, a changed default or help text fails here
until the README is regenerated. The apps its commands run and the files it
links to must exist; the commands themselves are run by the tests named in
the README (``test_examples``, ``test_browser_chat``, ``test_embedded``,
``test_compose``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from channels_lite.supervisor import RunConfig
from protocol_server.config import Config as ServerConfig
from worker.config import Config as WorkerConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    path = ROOT / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_what_the_cli_does(generator: ModuleType) -> None:
    assert generator.in_readme(README) == generator.reference(), (
        "README.md's configuration reference is stale: "
        f"run `{Path(sys.executable).name} scripts/config_reference.py --write`"
    )


@pytest.mark.parametrize(
    ("command", "config"),
    [("protocol-server", ServerConfig), ("worker", WorkerConfig), ("run", RunConfig)],
)
def test_every_config_field_has_a_row(generator: ModuleType, command: str, config: type) -> None:
    table = generator.table(command)
    for field in dataclasses.fields(config):
        if field.init and field.name != "app":  # app is the APP argument's row
            variable = f"CHANNELS_LITE_{field.name.upper()}"
            assert f"| `--{field.name.replace('_', '-')}` | `{variable}`" in table, field.name
    assert "| `APP` (argument) | `CHANNELS_LITE_APP`" in table or command == "protocol-server"


def test_the_apps_the_readme_runs_exist() -> None:
    runs = re.findall(r"channels-lite (?:run|worker) (\S+):\w+ --app-dir (\S+)", README)
    assert len(runs) >= 4, runs  # the quick start, the tour, and by hand
    for module, app_dir in runs:
        path = ROOT / app_dir / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module


def test_linked_files_exist() -> None:
    links = re.findall(r"\]\(((?!https?:)[^)#]+)\)", README)
    assert links
    assert [link for link in links if not (ROOT / link).exists()] == []
