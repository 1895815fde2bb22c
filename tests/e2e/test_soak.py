"""``bench/soak.py`` in miniature: it deploys, loads, kills a worker and reports.

Why: the soak is run by hand for minutes at a time; a script that broke
since (an option renamed, a process that no longer gets ready, a report
field gone) should fail here, in seconds, not at the start of a long run.
This checks the mechanics, not the numbers: traffic was served, exactly
the scheduled kill happened and its replacement ran, every process has its
RSS readings, and everything else exited 0 on SIGTERM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_soak_serves_kills_restarts_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = ["--duration", "7", "--kill-every", "4", "--servers", "1", "--workers", "2"]
    args += ["--http-clients", "3", "--ws-clients", "4", "--sample-every", "2"]
    args += ["--json", str(out), "--logs", str(tmp_path / "logs")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP requests served (200)" in result.stdout
    assert "processes (RSS MiB)" in result.stdout
    report = json.loads(out.read_text())

    assert report["http"]["ok"] > 0
    assert report["ws"]["echoes"] > 0
    assert report["ws"]["opened"] >= 4
    [kill] = report["kills"]
    assert 4 <= kill["at"] < 7
    procs = {p["name"]: p for p in report["processes"]}
    assert set(procs) == {"redis", "server-1", "worker-1", "worker-2", "worker-1.2"}
    killed, replacement = procs["worker-1"], procs["worker-1.2"]
    assert (killed["pid"], replacement["pid"]) == (kill["killed_pid"], kill["started_pid"])
    assert killed["killed"]
    assert killed["exit"] == -9
    assert replacement["started"] >= kill["at"]
    for proc in procs.values():
        assert proc["rss_start_kib"] > 0, proc
        assert proc["rss_end_kib"] > 0, proc
        assert proc["rss_peak_kib"] >= proc["rss_end_kib"], proc
        assert proc["exit"] == (-9 if proc is killed else 0), proc
        assert not proc["died_early"]
    assert len(procs["server-1"]["rss_samples_kib"]) >= 3  # start, samples, end
    assert sum(row.get("http_ok", 0) for row in report["intervals"]) == report["http"]["ok"]
    assert report["redis_keys"]["end"]["asgi:connect"] == 1  # the connect stream
