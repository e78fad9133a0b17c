"""The spool's disk under faults: full while the broker is up, full while it is down (issue #15 item 1).

The disk is a real tmpfs of a few hundred KiB (root only; skipped elsewhere), filled by a ballast file while the
daemon runs, so the spool meets the real ENOSPC error path, not a simulated one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edge.config import load_config
from edge.daemon import run_daemon
from tests.conftest import Broker, fill_disk
from tests.edge.test_daemon import PREFIX, write_config, write_frames
from tests.faults.conftest import record_seqs, tally

pytestmark = pytest.mark.timeout(120)


def disk_config(tmp_path: Path, broker: Broker, bundle: Any, spool: Path, frames: int, **source: Any) -> Path:
    """A daemon on a folder of `frames` images with its spool in `spool`."""
    folder = tmp_path / "frames"
    write_frames(folder, frames)
    return write_config(tmp_path, broker, bundle, folder, source=source,
                        mqtt={"spool_dir": str(spool), "spool_fsync": "batch"},
                        pipeline={"shutdown_timeout_s": 5.0})


class TestDiskFull:
    """ENOSPC under the spool."""

    def test_full_disk_with_the_broker_up_loses_nothing(self, bundle: Any, broker: Broker, mqtt_collector: Any,
                                                        small_disk: Any, daemons: Any, tmp_path: Path) -> None:
        """The disk fills mid-stream: verdicts go to the broker directly, in seq order, and the log says so."""
        disk = small_disk(1024)
        results = mqtt_collector(f"{PREFIX}/result")
        stats = mqtt_collector(f"{PREFIX}/stats")
        daemon = daemons(disk_config(tmp_path, broker, bundle, disk / "spool", 120, fps=30))
        assert results.wait_for(15, 20), daemon.text()[-3000:]
        fill_disk(disk)
        assert daemon.wait(60) == 0, daemon.text()[-3000:]
        assert results.wait_until(lambda m: len({json.loads(p)["seq"] for _, p, _ in m}) >= 120, 40), (
            sorted(set(range(120)) - {r["seq"] for r in results.json()}),
            [e for e in daemon.events() if e.get("level") in {"warning", "error", "critical"}][-20:],
            daemon.events("daemon_stopped"))
        seen = tally(results.json())
        record_seqs("spool disk full mid-stream, broker up (1 MiB tmpfs filled; 120 frames at 30 fps)", 120, seen)
        assert (seen.unique, seen.gaps, seen.different_duplicates, seen.in_order) == (120, [], [], True)
        failed = daemon.events("spool_write_failed")
        assert failed and failed[0]["level"] == "error"
        assert any(json.loads(p)["mqtt"]["spool_write_failed"] > 0 for _, p, _ in stats.messages)

    def test_full_disk_with_the_broker_down_stops_and_exits_nonzero(self, bundle: Any, broker: Broker,
                                                                   mqtt_collector: Any, small_disk: Any,
                                                                   daemons: Any, tmp_path: Path) -> None:
        """Neither spool nor broker: the daemon stops admitting frames and exits non-zero, naming what was lost.

        What reached the spool before the disk filled is delivered by the next start; what was lost shows as a seq
        gap of exactly the verdicts the first daemon reported lost.
        """
        disk = small_disk(1024)
        results = mqtt_collector(f"{PREFIX}/result")
        broker.stop()
        spool = disk / "spool"
        config = disk_config(tmp_path, broker, bundle, spool, 10, loop=True, fps=20)
        first = daemons(config)
        state = spool / "seq.json"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if state.is_file() and json.loads(state.read_text() or '{"next": 0}').get("next", 0) >= 10:
                break
            time.sleep(0.05)
        fill_disk(disk)
        code = first.wait(30)
        assert code not in (0, None), first.text()[-3000:]
        lost_events = first.events("verdicts_lost")
        assert lost_events and lost_events[-1]["level"] == "critical"
        lost = sorted({s for e in lost_events for s in e["seqs"]})
        assert lost
        (disk / "ballast").unlink()
        broker.start()
        second = daemons(config, "--max-frames", "3")
        assert second.wait(60) == 0, second.text()[-3000:]
        top = max(lost) + 3
        assert results.wait_until(lambda m: max((json.loads(p)["seq"] for _, p, _ in m), default=-1) >= top, 20)
        seen = tally(results.json())
        record_seqs("spool disk full with the broker down (1 MiB tmpfs filled at 20 fps), restart", top + 1, seen,
                    note=f"the daemon exits 1 naming the {len(lost)} verdicts it could not keep (seqs {lost}); "
                    "everything spooled before is delivered")
        assert seen.gaps == lost  # exactly the verdicts the first daemon said it lost, nothing else
        assert seen.different_duplicates == [] and seen.in_order


class TestSpoolRecovery:
    """Item 5: a damaged record costs that record only, and the loss is counted and named."""

    def test_one_flipped_byte_loses_one_verdict_not_the_rest(self, bundle: Any, broker: Broker,
                                                             mqtt_collector: Any, tmp_path: Path) -> None:
        """A flipped byte in the spooled verdict seq 10 (of 40): the 39 others are delivered, seq 10 is reported."""
        results = mqtt_collector(f"{PREFIX}/result")
        folder = tmp_path / "frames"
        write_frames(folder, 5)
        path = write_config(tmp_path, broker, bundle, folder, source={"loop": True},
                            pipeline={"shutdown_timeout_s": 0.5})
        config = load_config(path, base_dir=tmp_path)
        broker.stop()
        assert run_daemon(config, max_frames=40, base_dir=tmp_path)["published"] == 40
        flipped = 0
        for file in (tmp_path / "spool").iterdir():
            data = bytearray(file.read_bytes())
            at = data.find(b'"seq":10,')
            while at >= 0:
                data[at + len(b'"seq":10,') + 3] ^= 0x01  # inside "frame_id": the payload, not the framing
                flipped += 1
                at = data.find(b'"seq":10,', at + 1)
            file.write_bytes(bytes(data))
        assert flipped
        broker.start()
        with capture_logs() as logs:
            second = run_daemon(config, max_frames=5, base_dir=tmp_path)
        assert second["exit_code"] == 1  # a verdict was lost: never exit 0
        assert results.wait_until(lambda m: {json.loads(p)["seq"] for _, p, _ in m} >= set(range(45)) - {10}, 20)
        seen = tally(results.json())
        record_seqs("one flipped byte in spooled verdict 10 of 40, restart", 45, seen,
                    note="storage damage: the damaged verdict is reported lost (seq 10), exit 1; the 39 others arrive")
        assert seen.gaps == [10] and seen.different_duplicates == []
        lost = [e for e in logs if e["event"] == "spool_record_corrupt"]
        assert lost and lost[0]["log_level"] == "error" and lost[0]["seqs"] == [10]
        assert second["spool_dropped"] == 1
