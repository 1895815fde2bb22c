"""RFC 6455 conformance: Autobahn|Testsuite cases through a protocol server and a worker.

The quick subset of ``scripts/autobahn.py`` (framing, pings, reserved bits and
opcodes, fragmentation, UTF-8 handling, close codes, auto-fragmentation,
messages that cross the relay in parts) runs here on every test run against
each terminating implementation; the full 517 cases take minutes and are
run with the script itself (see its docstring and docs/testing.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from scripts import autobahn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _need_kosoku() -> None:
    if importlib.util.find_spec("kosoku") is None:
        pytest.fail("the Autobahn tests need kosoku: pip install -e '.[dev]'", pytrace=False)


@pytest.mark.parametrize("ws", ["websockets-sansio", "wsproto"])
def test_autobahn_quick_subset(ws: str, tmp_path: Path) -> None:
    summary = autobahn.run_channels_lite(
        tmp_path,
        ws=ws,
        cases=autobahn.QUICK_CASES,
        parallelism=4,  # the 6.4.x cases wait out timers: overlap them
        timeout=50,
    )
    assert len(summary.cases) >= 200, summary.describe()
    assert summary.failures == [], summary.describe()
