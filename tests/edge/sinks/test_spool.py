"""The on-disk spool: order, acknowledgement watermark, restart, torn tails, compaction and the size cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.errors import ConfigError
from edge.sinks.spool import Spool


def _fill(spool: Spool, seqs: range, size: int = 20) -> list[int]:
    """Append one padded record per seq."""
    return [spool.append(seq, f"verdict-{seq:06d}".encode().ljust(size, b".")) for seq in seqs]


def _drain(spool: Spool) -> list[tuple[int, int]]:
    """Read every unread record as (record id, seq)."""
    out = []
    while (record := spool.read_next()) is not None:
        out.append((record.rid, record.seq))
    return out


class TestSpool:
    """The spool on its own, on a real folder."""

    @pytest.mark.parametrize("fsync", ["always", "batch", "never"])
    def test_records_come_back_in_order_with_their_seq(self, tmp_path: Path, fsync: str) -> None:
        """Whatever the fsync policy, records are read back in append order with ids 0.. and their verdict seq."""
        spool = Spool(tmp_path, max_bytes=1_000_000, fsync=fsync)  # type: ignore[arg-type]
        _fill(spool, range(100, 110))
        assert _drain(spool) == [(i, 100 + i) for i in range(10)]
        assert spool.depth == 10
        spool.close()

    def test_ack_watermark_moves_only_over_a_gap_free_run(self, tmp_path: Path) -> None:
        """Out-of-order acks count towards depth but the watermark waits for the missing record."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(5))
        for rid in (1, 2, 4):
            spool.ack(rid)
        assert (spool.watermark, spool.depth) == (0, 2)
        spool.ack(0)
        assert (spool.watermark, spool.depth) == (3, 1)
        spool.ack(3)
        assert (spool.watermark, spool.depth) == (5, 0)

    def test_reopened_spool_replays_unacknowledged_records(self, tmp_path: Path) -> None:
        """A new Spool on the same folder hands out what was not acknowledged, and new ids continue after the old."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(6))
        _drain(spool)
        for rid in range(3):
            spool.ack(rid)
        spool.close()
        again = Spool(tmp_path, max_bytes=1_000_000)
        assert again.depth == 3
        assert _drain(again) == [(3, 3), (4, 4), (5, 5)]
        assert again.append(0, b"after restart") == 6

    def test_crash_without_close_duplicates_but_never_loses(self, tmp_path: Path) -> None:
        """Without close() the saved watermark may lag: replay then repeats records (same seq), but skips none."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(4))
        spool.ack(0)  # first save of the watermark happens at once
        spool.ack(1)  # within 0.5 s: not saved yet
        spool._lock_file.close()  # the first process is "killed": the kernel releases its lock, nothing else
        again = Spool(tmp_path, max_bytes=1_000_000)
        assert [seq for _, seq in _drain(again)] == [1, 2, 3]

    def test_torn_tail_is_cut_and_appending_continues(self, tmp_path: Path) -> None:
        """Half a record at the end of the last segment (power cut) is removed on start-up."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(3))
        spool.close()
        segment = sorted(tmp_path.glob("seg-*.log"))[-1]
        with segment.open("ab") as f:
            f.write(b"\x10\x00\x00\x00garbage")
        with capture_logs() as logs:
            again = Spool(tmp_path, max_bytes=1_000_000)
        assert any(e["event"] == "spool_torn_tail_cut" for e in logs)
        again.append(3, b"next")
        assert [seq for _, seq in _drain(again)] == [0, 1, 2, 3]

    def test_fully_acknowledged_segments_are_deleted(self, tmp_path: Path) -> None:
        """Compaction: once every record of a segment is acknowledged, its file goes (the active one stays)."""
        spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=200)
        _fill(spool, range(30))
        assert len(list(tmp_path.glob("seg-*.log"))) > 3
        for record in iter(spool.read_next, None):
            spool.ack(record.rid)
        assert len(list(tmp_path.glob("seg-*.log"))) == 1
        assert spool.depth == 0

    def test_cap_drops_oldest_loudly(self, tmp_path: Path) -> None:
        """Past max_bytes the oldest segment is deleted, counted in `dropped`, and a warning names the loss."""
        spool = Spool(tmp_path, max_bytes=4096, segment_bytes=1024)
        with capture_logs() as logs:
            _fill(spool, range(200), size=40)  # 200 x 68 bytes = 13.6 KB through a 4 KB spool
        warnings = [e for e in logs if e["event"] == "spool_full_dropped_oldest"]
        assert warnings and warnings[0]["log_level"] == "warning"
        assert spool.dropped == sum(e["dropped"] for e in warnings) > 0
        assert spool.size_bytes() <= 4096
        seqs = [seq for _, seq in _drain(spool)]
        assert seqs == list(range(200 - len(seqs), 200))  # the newest survive, in order, without gaps
        assert spool.dropped + len(seqs) == 200

    def test_rewind_hands_a_record_out_again(self, tmp_path: Path) -> None:
        """A record that could not be sent is read again next."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(3))
        first = spool.read_next()
        assert first is not None
        spool.rewind(first.rid)
        assert [seq for _, seq in _drain(spool)] == [0, 1, 2]

    def test_second_owner_is_refused_until_the_first_closes(self, tmp_path: Path) -> None:
        """Two processes appending to one spool would interleave ids, so a second open fails with a clear error."""
        first = Spool(tmp_path, max_bytes=1_000_000)
        with pytest.raises(ConfigError, match="in use by another inspectd process"):
            Spool(tmp_path, max_bytes=1_000_000)
        first.close()
        Spool(tmp_path, max_bytes=1_000_000).close()

    def test_unwritable_folder_is_a_config_error(self, tmp_path: Path) -> None:
        """A spool_dir that cannot be created names the key and the reason."""
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        with pytest.raises(ConfigError, match="mqtt.spool_dir"):
            Spool(blocker / "spool", max_bytes=1_000_000)

    def test_record_larger_than_a_segment_and_empty_leftover_segment(self, tmp_path: Path) -> None:
        """An oversized record gets a segment of its own; an empty segment left by a crash is not reused twice."""
        spool = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=64)
        _fill(spool, range(3), size=200)
        spool.close()
        (tmp_path / f"seg-{3:020d}.log").touch()  # crash right after creating the next segment
        again = Spool(tmp_path, max_bytes=1_000_000, segment_bytes=64)
        _fill(again, range(3, 5), size=200)
        assert len(list(tmp_path.glob("seg-*.log"))) == 5
        assert [seq for _, seq in _drain(again)] == [0, 1, 2, 3, 4]
