"""No code path can turn bytes from Redis into code or arbitrary objects.

Why: everything on the wire is written by whoever can reach Redis. The
codec is msgpack with plain types only (``docs/wire-protocol.md``); a single
``pickle.loads``, ``eval`` or ``yaml.load`` anywhere in the processes would
make Redis write access into code execution, keyring or not. This reads the
source of every shipped package (the AST, so comments and strings do not
count) and fails on any such call or import; tests may use
``yaml.safe_load`` and nothing looser.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("channels_lite", "protocol_server", "worker")
#: Modules whose job is to rebuild arbitrary objects (or run code) from bytes.
FORBIDDEN_MODULES = {
    "pickle", "_pickle", "cPickle", "cloudpickle", "dill", "jsonpickle", "marshal", "shelve",
    "copyreg", "yaml", "pickletools",
}  # fmt: skip
#: Built-ins that run code given as data.
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}
#: yaml entry points that can build arbitrary objects.
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def _problems(path: Path, forbidden_modules: set[str]) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        where = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        found += [f"{where}: imports {n}" for n in names if n in forbidden_modules]
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                found.append(f"{where}: calls {func.id}()")
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id == "yaml"
                and func.attr in UNSAFE_YAML
            ):
                found.append(f"{where}: calls yaml.{func.attr}()")
    return found


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_the_shipped_packages_never_unpickle_or_eval() -> None:
    files = _sources(*SHIPPED)
    assert len(files) > 30  # the walk found the packages
    problems = [p for path in files for p in _problems(path, FORBIDDEN_MODULES)]
    assert problems == []


def test_tests_and_tools_read_yaml_safely_only() -> None:
    # Tests may parse docker-compose.yml, with safe_load: still no pickle, no eval.
    files = _sources("tests", "scripts", "bench", "examples")
    problems = [p for path in files for p in _problems(path, FORBIDDEN_MODULES - {"yaml"})]
    assert problems == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import pickle", "imports pickle"),
        ("from marshal import loads", "imports marshal"),
        ("eval(data)", "calls eval()"),
        ("import yaml\nyaml.load(text)", "calls yaml.load()"),
    ],
)
def test_the_check_catches_each_form(tmp_path: Path, source: str, expected: str) -> None:
    # The check itself must be able to fail.
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    allowed = {"yaml"} if "yaml.load" in source else set()  # as for tests: import, not load
    found = _problems(path, FORBIDDEN_MODULES - allowed)
    assert any(expected in problem for problem in found), found
