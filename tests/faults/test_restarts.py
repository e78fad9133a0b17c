"""Restarts under faults: kills with the broker down, quick start/stop cycles, lost seq state, a kill mid-publish.

Issue #15 item 4 (seq reuse with different content; a kill between "seq recorded" and "verdict spooled"), item 10
(frame_id continues across restarts, as the schema says), and the held scenarios: SIGKILL with the broker down
(no gaps, same-payload duplicates only, `seq_resumed_after_crash`), start/stop cycles mixing SIGTERM, SIGINT and
SIGKILL (no gaps, a Last Will or an "offline" every time).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_config
from edge.daemon import run_daemon
from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, write_config, write_frames
from tests.faults.conftest import python_cmd, record_seqs, scale, tally

pytestmark = pytest.mark.timeout(120)


def looping_config(tmp_path: Path, broker: Broker, bundle: Any, fps: float = 40.0, **extra: Any) -> Path:
    """A daemon on a looping folder of five frames at `fps`, spool in tmp_path/spool."""
    frames = tmp_path / "frames"
    write_frames(frames, 5)
    return write_config(tmp_path, broker, bundle, frames, source={"loop": True, "fps": fps}, **extra)


def wait_seq_state(spool: Path, at_least: int, timeout: float = 20.0) -> int:
    """Wait until seq.json says `next >= at_least` (verdicts reached the sinks); returns it."""
    state = spool / "seq.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state.is_file():
            text = state.read_text().strip()
            if text and json.loads(text).get("next", 0) >= at_least:
                return int(json.loads(text)["next"])
        time.sleep(0.05)
    pytest.fail(f"seq.json did not reach {at_least} within {timeout} s")


def wait_all(results: Any, top: int, timeout: float = 30.0) -> None:
    """Wait until seq `top` or a later one arrived."""
    assert results.wait_until(lambda m: max((json.loads(p)["seq"] for _, p, _ in m), default=-1) >= top, timeout)


class TestSeqNeverReused:
    """Item 4: a seq is never published twice with different content, and never skipped by a kill."""

    def test_lost_seq_state_recovers_from_the_spool(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                    tmp_path: Path) -> None:
        """seq.json and seq.reserved gone, 40 verdicts still spooled: the next run continues after them."""
        results = mqtt_collector(f"{PREFIX}/result")
        path = looping_config(tmp_path, broker, bundle, fps=0.0, pipeline={"shutdown_timeout_s": 0.5})
        config = load_config(path, base_dir=tmp_path)
        broker.stop()
        first = run_daemon(config, max_frames=40, base_dir=tmp_path)
        assert first["published"] == 40 and not first["delivered"]
        for name in ("seq.json", "seq.reserved"):
            (tmp_path / "spool" / name).unlink()
        broker.start()
        second = run_daemon(config, max_frames=10, base_dir=tmp_path)
        assert second["exit_code"] == 0
        assert results.wait_for(50, 30)
        seen = tally(results.json())
        record_seqs("seq.json and seq.reserved deleted with 40 verdicts spooled, restart", 50, seen)
        assert seen.different_duplicates == [] and seen.gaps == [] and seen.unique == 50

    def test_kill_right_after_the_seq_is_recorded(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                  daemons: Any, tmp_path: Path) -> None:
        """A SIGKILL the instant seq 15 is recorded as published leaves no gap: 15 is delivered, or reused unseen."""
        results = mqtt_collector(f"{PREFIX}/result")
        path = looping_config(tmp_path, broker, bundle, fps=0.0)
        seam = (
            "import os, signal, sys\n"
            "from edge import seq\n"
            "original = seq.SeqCounter.publishing\n"
            "def publishing(self, n, *rest):\n"
            "    original(self, n, *rest)\n"
            "    if n == 15:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "seq.SeqCounter.publishing = publishing\n"
            "from edge.cli import main\n"
            "sys.exit(main(['run', '--config', sys.argv[1]]))\n"
        )
        killed = daemons(path, argv=python_cmd(seam, str(path)))
        assert killed.wait(30) == -signal.SIGKILL
        after = daemons(path, "--max-frames", "5")
        assert after.wait(30) == 0, after.text()[-3000:]
        top = max(json.loads(p)["seq"] for p in results.payloads()) if results.messages else 0
        wait_all(results, max(top, 19))
        seen = tally(results.json())
        record_seqs("SIGKILL right after seq 15 is recorded (seam), restart", max(seen.by_seq) + 1, seen)
        assert seen.gaps == [] and seen.different_duplicates == [] and seen.unique >= 20


class TestHeldRestarts:
    """Held scenarios (regression tests); INSPECTD_FAULTS=full runs them at the README's lengths."""

    def test_sigkill_repeatedly_with_the_broker_down(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                     daemons: Any, tmp_path: Path) -> None:
        """Killed N times while the broker is down, then the broker returns: no gaps, same-payload duplicates only."""
        results = mqtt_collector(f"{PREFIX}/result")
        path = looping_config(tmp_path, broker, bundle)
        broker.stop()
        reached = 0
        for _ in range(int(scale(3, 6))):
            daemon = daemons(path)
            reached = wait_seq_state(tmp_path / "spool", reached + 8)
            daemon.kill()
            assert daemon.proc.returncode == -signal.SIGKILL
        assert daemon.events("seq_resumed_after_crash")
        broker.start()
        final = daemons(path, "--max-frames", "5")
        assert final.wait(60) == 0, final.text()[-3000:]
        wait_all(results, reached + 4)
        seen = tally(results.json())
        kills = int(scale(3, 6))
        record_seqs(f"SIGKILL x{kills} with the broker down, then the broker returns", max(seen.by_seq) + 1, seen,
                    note="same-payload duplicates only")
        assert seen.gaps == [] and seen.different_duplicates == [] and seen.in_order

    def test_quick_start_stop_cycles(self, bundle: Any, broker: Broker, mqtt_collector: Any, daemons: Any,
                                     tmp_path: Path) -> None:
        """Start/stop cycles with SIGTERM, SIGINT and SIGKILL in turn: no gaps, and "offline" after every stop."""
        results = mqtt_collector(f"{PREFIX}/result")
        status = mqtt_collector(f"{PREFIX}/status")
        path = looping_config(tmp_path, broker, bundle)
        signals = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL]
        for i in range(int(scale(3, 20))):
            n = len(status.messages)
            daemon = daemons(path)
            assert status.wait_until(lambda m, n=n: b"online" in [p for _, p, _ in m[n:]], 20), daemon.text()
            time.sleep(0.2 * (i % 3))  # stop at different moments: at once, mid-stream
            daemon.signal(signals[i % 3])
            code = daemon.wait(30)
            assert code == (-signal.SIGKILL if signals[i % 3] == signal.SIGKILL else 0), daemon.text()[-3000:]
            assert status.wait_until(lambda m: m[-1][1] == b"offline", 10)
        final = daemons(path, "--max-frames", "3")
        assert final.wait(60) == 0
        top = max(json.loads(p)["seq"] for p in results.payloads())
        wait_all(results, top)
        seen = tally(results.json())
        record_seqs(f"{int(scale(3, 20))} quick start/stop cycles, SIGTERM/SIGINT/SIGKILL in turn", top + 1, seen,
                    note="'offline' (or the Will) after every stop")
        assert seen.gaps == [] and seen.different_duplicates == []


def test_frame_id_continues_across_restarts(bundle: Any, broker: Broker, mqtt_collector: Any,
                                            tmp_path: Path) -> None:
    """Item 10: frame_id is monotonic across restarts, as the schema says, like seq."""
    results = mqtt_collector(f"{PREFIX}/result")
    path = looping_config(tmp_path, broker, bundle, fps=0.0)
    config = load_config(path, base_dir=tmp_path)
    for _ in range(2):
        assert run_daemon(config, max_frames=4, base_dir=tmp_path)["exit_code"] == 0
    assert results.wait_for(8, 10)
    frame_ids = [r["frame_id"] for r in sorted(results.json(), key=lambda r: r["seq"])]
    assert frame_ids == sorted(set(frame_ids)), frame_ids
