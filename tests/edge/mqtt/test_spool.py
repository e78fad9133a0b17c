"""The on-disk spool (SQLite): order, acknowledgement watermark, restart, damage, the size cap, fsync per mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edge.errors import ConfigError
from edge.mqtt import spool as spool_module
from edge.mqtt.spool import DB_NAME, Spool, SpoolError
from tests.conftest import fill_disk


def _fill(spool: Spool, seqs: range, size: int = 20) -> list[int]:
    """Append one padded record per seq."""
    return [spool.append(seq, f"verdict-{seq:06d}".encode().ljust(size, b".")) for seq in seqs]


def _drain(spool: Spool) -> list[tuple[int, int]]:
    """Read every unread record as (record id, seq)."""
    out = []
    while (record := spool.read_next()) is not None:
        out.append((record.rid, record.seq))
    return out


def _kill(spool: Spool) -> None:
    """What a SIGKILL leaves: nothing closed, nothing flushed beyond what append did; the kernel drops the lock."""
    spool._lock_file.close()


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

    def test_killed_process_duplicates_but_never_loses(self, tmp_path: Path) -> None:
        """After a kill the saved watermark may lag: replay then repeats records (same seq), but skips none."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(4))
        spool.ack(0)  # the first ack saves the watermark at once
        spool.ack(1)  # within 0.5 s: not saved yet
        _kill(spool)
        again = Spool(tmp_path, max_bytes=1_000_000)
        assert [seq for _, seq in _drain(again)] == [1, 2, 3]

    def test_last_seq_survives_when_everything_was_delivered(self, tmp_path: Path) -> None:
        """The newest row is kept even when acknowledged, so the highest seq ever spooled is known after a restart."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(40, 45))
        for record in iter(spool.read_next, None):
            spool.ack(record.rid)
        spool.close()
        again = Spool(tmp_path, max_bytes=1_000_000)
        assert (again.depth, again.last_seq, again.next_id) == (0, 44, 5)

    def test_cap_drops_oldest_loudly(self, tmp_path: Path) -> None:
        """Past max_bytes the oldest records are deleted, counted in `dropped`, and a warning names the seqs lost."""
        spool = Spool(tmp_path, max_bytes=4096)
        with capture_logs() as logs:
            _fill(spool, range(200), size=40)  # 200 x 40 bytes = 8 KB through a 4 KB spool
        warnings = [e for e in logs if e["event"] == "spool_full_dropped_oldest"]
        assert warnings and warnings[0]["log_level"] == "warning" and warnings[0]["seq_first"] == 0
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

    def test_unusable_folder_is_a_config_error(self, tmp_path: Path) -> None:
        """A spool_dir below a file, a spool_dir that is a file, a database that is a folder: each names the key."""
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        for where in (blocker / "spool", blocker):
            with pytest.raises(ConfigError, match="mqtt.spool_dir"):
                Spool(where, max_bytes=1_000_000)
        (tmp_path / "db-folder" / DB_NAME).mkdir(parents=True)
        with pytest.raises(ConfigError, match="mqtt.spool_dir"):
            Spool(tmp_path / "db-folder", max_bytes=1_000_000)

    def test_old_segment_spool_is_refused_not_ignored(self, tmp_path: Path) -> None:
        """Segment files of the old format are never silently skipped: their verdicts would be lost."""
        (tmp_path / "seg-00000000000000000000.log").write_bytes(b"old records")
        with pytest.raises(ConfigError, match="older inspectd"):
            Spool(tmp_path, max_bytes=1_000_000)

    def test_oversized_record_is_refused_at_write_time(self, tmp_path: Path) -> None:
        """A record over MAX_RECORD raises before anything is written; the spool goes on."""
        spool = Spool(tmp_path, max_bytes=64 << 20)
        with pytest.raises(ValueError, match="more than the spool's limit"):
            spool.append(1, b"x" * (spool_module.MAX_RECORD + 1))
        _fill(spool, range(2, 4))
        assert [seq for _, seq in _drain(spool)] == [2, 3]


class TestDamage:
    """Damage on the medium costs the damaged record only, and the loss is counted and named."""

    def test_flipped_byte_drops_that_record_only(self, tmp_path: Path) -> None:
        """One flipped payload byte: that record is dropped and logged with its seq; the 39 others come back."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(40), size=60)
        spool.close()
        db = tmp_path / DB_NAME
        data = bytearray(db.read_bytes())
        at = data.find(b"verdict-000010")
        assert at > 0
        data[at + 3] ^= 0x01
        db.write_bytes(bytes(data))
        again = Spool(tmp_path, max_bytes=1_000_000)
        with capture_logs() as logs:
            seqs = [seq for _, seq in _drain(again)]
        assert seqs == [s for s in range(40) if s != 10]
        corrupt = [e for e in logs if e["event"] == "spool_record_corrupt"]
        assert corrupt and corrupt[0]["seqs"] == [10] and corrupt[0]["log_level"] == "error"
        assert again.dropped == 1 and again.depth == 39

    def test_destroyed_database_is_moved_aside(self, tmp_path: Path) -> None:
        """A database whose header is gone is kept aside for forensics, the loss is said, and spooling goes on."""
        spool = Spool(tmp_path, max_bytes=1_000_000)
        _fill(spool, range(5))
        spool.close()
        (tmp_path / DB_NAME).write_bytes(b"\0" * 8192)
        with capture_logs() as logs:
            again = Spool(tmp_path, max_bytes=1_000_000)
        assert again.unknown_loss and any(e["event"] == "spool_record_corrupt" for e in logs)
        assert list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))
        _fill(again, range(5, 7))
        assert [seq for _, seq in _drain(again)] == [5, 6]


class TestFsyncModes:
    """`spool_fsync` decides what survives a power cut; these check each mode asks the OS for what it promises."""

    @pytest.mark.parametrize(("mode", "synchronous"), [("always", 2), ("batch", 1), ("never", 0)])
    def test_sqlite_synchronous_per_mode(self, tmp_path: Path, mode: str, synchronous: int) -> None:
        """Always = FULL (WAL fsynced at every commit), batch = NORMAL, never = OFF."""
        spool = Spool(tmp_path, max_bytes=1_000_000, fsync=mode)  # type: ignore[arg-type]
        assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == synchronous
        assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        spool.close()

    @pytest.mark.parametrize(("mode", "wal_fsyncs"), [("always", False), ("batch", True), ("never", False)])
    def test_batch_fsyncs_the_wal_every_100_ms(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                                               wal_fsyncs: bool) -> None:
        """batch: appends spread over 0.3 s fsync the WAL (seen through os.fsync); the other modes leave it to SQLite."""
        calls: list[int] = []
        real = spool_module.os.fsync
        monkeypatch.setattr(spool_module.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
        spool = Spool(tmp_path, max_bytes=1_000_000, fsync=mode)  # type: ignore[arg-type]
        for seq in range(6):
            spool.append(seq, b"verdict")
            time.sleep(0.06)
        spool.sync_if_due()
        assert (len(calls) >= 2) is wal_fsyncs, calls
        spool.close()


def test_disk_full_raises_spool_error_and_recovers(tmp_path: Path, small_disk: Callable[[int], Path]) -> None:
    """ENOSPC on a real tmpfs: append raises SpoolError (nothing half-written); once space is back, it works again."""
    disk = small_disk(1024)
    spool = Spool(disk / "spool", max_bytes=64 << 20, fsync="never")
    fill_disk(disk)
    with pytest.raises(SpoolError, match="cannot store verdict seq"):
        for seq in range(10_000):
            spool.append(seq, b"v" * 300)
    stored = spool.next_id
    (disk / "ballast").unlink()
    spool.append(99_999, b"after")
    assert spool.next_id == stored + 1
    seqs = [seq for _, seq in _drain(spool)]
    assert seqs[-1] == 99_999 and seqs[:-1] == list(range(stored))


def test_rewind_skips_what_was_acknowledged_meanwhile(tmp_path: Path) -> None:
    """After a rewind, records acknowledged out of order are not handed out again (no needless duplicates)."""
    spool = Spool(tmp_path, max_bytes=1_000_000)
    _fill(spool, range(5))
    _drain(spool)
    for rid in (1, 3):
        spool.ack(rid)
    spool.rewind(0)
    assert [rid for rid, _ in _drain(spool)] == [0, 2, 4]
