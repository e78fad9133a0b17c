"""Progress off a terminal: structured lines at most every interval, never a bar."""

from __future__ import annotations

import io
import json

from detectors.progress import Progress
from edge.log import configure


def test_off_a_terminal_logs_rate_limited_json_lines(monkeypatch):
    """1000 updates with a 1 h interval log one final `progress` line with the count and the latest loss."""
    stream = io.StringIO()
    configure("info", "json", stream)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a TTY: no tqdm bar
    with Progress(1000, "unit-test", interval=3600) as bar:
        for i in range(1000):
            bar.update(1, loss=1.0 / (i + 1))
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if '"progress"' in line]
    assert len(lines) == 1
    assert lines[0]["done"] == 1000 and lines[0]["total"] == 1000 and lines[0]["finished"] is True
    assert lines[0]["loss"] == 0.001 and lines[0]["task"] == "unit-test"


def test_logs_again_after_the_interval(monkeypatch):
    """With a zero interval every update logs; disabled progress logs nothing."""
    stream = io.StringIO()
    configure("info", "json", stream)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = Progress(3, "every", interval=0.0)
    for _ in range(3):
        bar.update()
    bar.close()
    quiet = Progress(3, "quiet", enabled=False)
    quiet.update(3)
    quiet.close()
    tasks = [json.loads(line)["task"] for line in stream.getvalue().splitlines() if '"progress"' in line]
    assert tasks == ["every"] * 4
