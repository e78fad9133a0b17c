"""The on-disk store-and-forward spool: every verdict is written here first, then sent, then retired once acknowledged.

Design (kept simple on purpose, so it can be reasoned about on a line at 3 a.m.):

- **Segments.** Records are appended to `seg-<first record id>.log` files in `spool_dir`. The active segment rolls over
  to a new file at `segment_bytes`. Each record gets a *record id*, one more than the previous one, across segments
  and daemon restarts (a segment's name gives the id of its first record, so the next id is recovered from the last
  segment). Record ids are the spool's own numbering; the verdict's `seq` travels in the record too, but ordering
  never depends on it.
- **Record format.** `<u32 payload length><u32 crc32><u64 record id><i64 seq><payload>`, little-endian; the CRC covers
  id, seq and payload. A record torn by a power cut (short or bad CRC) ends its segment; start-up cuts that tail off.
- **Ack watermark.** The file `acked` holds the id of the first record not yet acknowledged. Acks may arrive out of
  order; the watermark only moves past a gap-free run. It is rewritten (temp file + rename) at most every 0.5 s and on
  close, so a crash can only *lower* it: records are then sent again with the same `seq` (at-least-once, duplicates
  identifiable), never lost.
- **Compaction.** A segment whose records are all below the watermark is deleted (the active one once it rolls).
- **Cap.** When the segments exceed `max_bytes`, the oldest segment is deleted whole, its unacknowledged records are
  counted in `dropped`, and a loud `spool_full_dropped_oldest` warning says how many were lost.
- **Reading.** One forward cursor (`read_next`) hands out unsent records in id order; a new `Spool` on the same folder
  starts it at the watermark, so what a previous process left is replayed first.
- **One owner.** A `flock` on `spool_dir/lock` keeps a second daemon off the same spool (it would interleave ids).
- **fsync.** `always`: every record; `batch`: at most every 100 ms (call `sync_if_due` from a loop so the last record
  is synced too); `never`: leave it to the OS. Records are always flushed to the OS at once, so a killed *process*
  loses nothing; fsync only matters for power loss.

All methods are thread-safe (one lock; the pipeline appends while the MQTT forwarder reads and acknowledges).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from edge.errors import ConfigError
from edge.log import get_logger

log = get_logger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]
_HEADER = struct.Struct("<IIQq")  # payload length, crc32(id + seq + payload), record id, seq
_MAX_PAYLOAD = 16 * 1024 * 1024  # anything larger is corruption, not a verdict
_BATCH_FSYNC_S = 0.1
_WATERMARK_EVERY_S = 0.5
_PREFIX, _SUFFIX = "seg-", ".log"


@dataclass(frozen=True)
class Record:
    """One spooled verdict: the spool's record id, the verdict's seq, and the exact bytes to publish."""

    rid: int
    seq: int
    payload: bytes


@dataclass
class _Segment:
    base: int  # id of its first record
    path: Path
    size: int


class Spool:
    """Append-only, size-capped, crash-safe queue of verdict payloads with an acknowledgement watermark.

    Args:
        directory: Spool folder; created if missing. One process per folder (locked).
        max_bytes: Size cap over all segment files; the oldest segment is dropped (loudly) beyond it.
        fsync: When to fsync appended records: `always`, `batch` (<= every 100 ms) or `never`.
        segment_bytes: Roll-over size of one segment; default: an eighth of the cap, clamped to 4 KiB..4 MiB, so the
            cap is enforced with that granularity.

    Raises:
        ConfigError: the folder cannot be created or written, or another process holds its lock.
    """

    def __init__(
        self, directory: Path, max_bytes: int, fsync: FsyncPolicy = "batch", segment_bytes: int | None = None
    ) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = (self.directory / "lock").open("a+")
        except OSError as exc:
            msg = f"mqtt.spool_dir {self.directory}: cannot create or write the spool folder ({exc.strerror})"
            raise ConfigError(msg) from None
        try:  # two daemons appending to one spool would interleave ids: refuse the second
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            msg = f"mqtt.spool_dir {self.directory} is in use by another inspectd process; give each daemon its own"
            raise ConfigError(msg) from None
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        self.segment_bytes = segment_bytes or min(4 << 20, max(4096, self.max_bytes // 8))
        self.dropped = 0  # records lost to the cap since this object was created
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._acked_ahead: set[int] = set()  # acknowledged ids above the watermark (out-of-order acks)
        self._dirty = False  # appended since the last fsync
        self._last_fsync = time.monotonic()
        self._watermark_saved_at = 0.0
        self._watermark_saved = -1
        self._writer: BinaryIO | None = None
        self._reader: BinaryIO | None = None
        self._reader_segment = -1  # base of the segment the reader has open
        self._reader_next = -1  # id of the record at the reader's file position
        self._recover()

    # start-up ---------------------------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Load segments, cut a torn tail off the last one, and place the cursor at the saved watermark."""
        for path in sorted(self.directory.glob(f"{_PREFIX}*{_SUFFIX}")):
            try:
                base = int(path.name[len(_PREFIX) : -len(_SUFFIX)])
            except ValueError:
                log.warning("spool_file_ignored", path=str(path), reason="name is not seg-<number>.log")
                continue
            self._segments.append(_Segment(base, path, path.stat().st_size))
        self._segments.sort(key=lambda s: s.base)
        self.next_id = 0
        if self._segments:
            last = self._segments[-1]
            count, good_bytes = _scan(last.path)
            if good_bytes < last.size:
                log.warning("spool_torn_tail_cut", path=str(last.path), bytes_cut=last.size - good_bytes)
                with last.path.open("r+b") as f:
                    f.truncate(good_bytes)
                last.size = good_bytes
            self.next_id = last.base + count
            if count == 0:  # created but never written (crash): the next append recreates it
                last.path.unlink()
                self._segments.pop()
        self.watermark = self._load_watermark()
        self.watermark = min(max(self.watermark, self._segments[0].base if self._segments else 0), self.next_id)
        self._watermark_saved = self.watermark
        self._cursor = self.watermark  # id of the next record read_next returns
        self._retire()
        if self.depth:
            log.info("spool_recovered", directory=str(self.directory), records=self.depth, first_id=self.watermark)

    def _load_watermark(self) -> int:
        path = self.directory / "acked"
        try:
            return int(path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return 0
        except ValueError:
            log.warning("spool_watermark_unreadable", path=str(path), action="replaying every spooled record")
            return 0

    # writing ----------------------------------------------------------------------------------------------------
    def append(self, seq: int, payload: bytes) -> int:
        """Write one record (flushed to the OS; fsynced per policy) and return its record id."""
        with self._lock:
            rid = self.next_id
            head = _HEADER.pack(len(payload), _crc(rid, seq, payload), rid, seq)
            writer = self._active_writer(len(head) + len(payload))
            writer.write(head + payload)
            writer.flush()
            self._segments[-1].size += len(head) + len(payload)
            self.next_id += 1
            self._dirty = True
            if self.fsync == "always" or (
                self.fsync == "batch" and time.monotonic() - self._last_fsync >= _BATCH_FSYNC_S
            ):
                self._fsync_locked()
            self._enforce_cap()
            return rid

    def _active_writer(self, record_bytes: int) -> BinaryIO:
        """The open active segment, rolled over to a new file when this record would overflow it."""
        if self._segments and self._writer is not None and self._segments[-1].size + record_bytes <= self.segment_bytes:
            return self._writer
        if self._segments and self._writer is None and self._segments[-1].size + record_bytes <= self.segment_bytes:
            self._writer = self._segments[-1].path.open("ab")  # reopen the last segment after a restart
            return self._writer
        if self._writer is not None:
            if self._dirty and self.fsync != "never":
                self._fsync_locked()
            self._writer.close()
        path = self.directory / f"{_PREFIX}{self.next_id:020d}{_SUFFIX}"
        self._writer = path.open("ab")
        self._segments.append(_Segment(self.next_id, path, 0))
        if self.fsync != "never":
            _fsync_dir(self.directory)
        self._retire()
        return self._writer

    def _enforce_cap(self) -> None:
        """Drop whole oldest segments while over the cap, counting their unacknowledged records."""
        lost = 0
        while len(self._segments) > 1 and sum(s.size for s in self._segments) > self.max_bytes:
            oldest, following = self._segments[0], self._segments[1]
            lost += max(0, following.base - max(oldest.base, self.watermark))
            self._delete(oldest)
            self.watermark = max(self.watermark, following.base)
            self._cursor = max(self._cursor, following.base)
            self._acked_ahead = {rid for rid in self._acked_ahead if rid >= self.watermark}
        if lost:
            self.dropped += lost
            log.warning(
                "spool_full_dropped_oldest",
                directory=str(self.directory),
                max_mb=round(self.max_bytes / 1e6, 3),
                dropped=lost,
                dropped_total=self.dropped,
                hint="the broker has been unreachable too long for mqtt.spool_max_mb; oldest verdicts are LOST",
            )

    # reading and acknowledging ------------------------------------------------------------------------------------
    def read_next(self) -> Record | None:
        """The next record not yet handed out (in id order), or None when all have been."""
        with self._lock:
            while self._cursor < self.next_id:
                seg = self._segment_of(self._cursor)
                if seg is None:  # a gap can only come from a dropped or corrupt segment: skip ahead
                    self._cursor = self._next_base_after(self._cursor)
                    continue
                record = self._read_at(seg, self._cursor)
                if record is None:
                    end = self._next_base_after(seg.base)
                    log.error("spool_record_corrupt", path=str(seg.path), rid=self._cursor, skipped=end - self._cursor)
                    self.dropped += end - self._cursor
                    for rid in range(self._cursor, end):
                        self._ack_locked(rid)
                    self._cursor = end
                    continue
                self._cursor += 1
                return record
            return None

    def _read_at(self, seg: _Segment, rid: int) -> Record | None:
        """Read record `rid` of `seg`, scanning from the segment start when the reader is elsewhere."""
        if self._reader_segment != seg.base or self._reader is None or self._reader_next != rid:
            if self._reader is not None:
                self._reader.close()
            self._reader = seg.path.open("rb")
            self._reader_segment = seg.base
            self._reader_next = seg.base
            while self._reader_next < rid:
                if _read_record(self._reader) is None:
                    return None
                self._reader_next += 1
        record = _read_record(self._reader)
        if record is None or record.rid != rid:
            return None
        self._reader_next = rid + 1
        return record

    def rewind(self, rid: int) -> None:
        """Hand out records from `rid` again (one that could not be sent); acknowledged ones are not re-read."""
        with self._lock:
            self._cursor = max(self.watermark, min(self._cursor, rid))

    def ack(self, rid: int) -> None:
        """Mark record `rid` delivered; advance the watermark and retire fully delivered segments."""
        with self._lock:
            self._ack_locked(rid)
            self._retire()
            if time.monotonic() - self._watermark_saved_at >= _WATERMARK_EVERY_S:
                self._save_watermark()

    def _ack_locked(self, rid: int) -> None:
        if rid < self.watermark:
            return
        self._acked_ahead.add(rid)
        while self.watermark in self._acked_ahead:
            self._acked_ahead.discard(self.watermark)
            self.watermark += 1

    @property
    def depth(self) -> int:
        """Records written but not yet acknowledged."""
        return self.next_id - self.watermark - len(self._acked_ahead)

    @property
    def unread(self) -> int:
        """Records not yet handed out by `read_next`."""
        return self.next_id - self._cursor

    def size_bytes(self) -> int:
        """Bytes in segment files now."""
        with self._lock:
            return sum(s.size for s in self._segments)

    # housekeeping -----------------------------------------------------------------------------------------------
    def sync_if_due(self) -> None:
        """Fsync pending appends when the `batch` period has passed, and save a moved watermark; call it often."""
        with self._lock:
            now = time.monotonic()
            if self._dirty and self.fsync == "batch" and now - self._last_fsync >= _BATCH_FSYNC_S:
                self._fsync_locked()
            if self.watermark != self._watermark_saved and now - self._watermark_saved_at >= _WATERMARK_EVERY_S:
                self._save_watermark()

    def close(self) -> None:
        """fsync, save the watermark and close files. The spool can be reopened by a new `Spool`."""
        with self._lock:
            if self._writer is not None:
                if self._dirty and self.fsync != "never":
                    self._fsync_locked()
                self._writer.close()
                self._writer = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._save_watermark()
            if not self._lock_file.closed:
                self._lock_file.close()  # releases the flock

    def _fsync_locked(self) -> None:
        if self._writer is not None:
            os.fsync(self._writer.fileno())
        self._dirty = False
        self._last_fsync = time.monotonic()

    def _save_watermark(self) -> None:
        tmp = self.directory / "acked.tmp"
        tmp.write_text(f"{self.watermark}\n", encoding="ascii")
        os.replace(tmp, self.directory / "acked")
        self._watermark_saved = self.watermark
        self._watermark_saved_at = time.monotonic()

    def _retire(self) -> None:
        """Delete segments (not the active one) whose every record is below the watermark."""
        while len(self._segments) > 1 and self._segments[1].base <= self.watermark:
            self._delete(self._segments[0])

    def _delete(self, seg: _Segment) -> None:
        if self._reader_segment == seg.base and self._reader is not None:
            self._reader.close()
            self._reader = None
            self._reader_segment = -1
        seg.path.unlink(missing_ok=True)
        self._segments.remove(seg)

    def _segment_of(self, rid: int) -> _Segment | None:
        for i, seg in enumerate(self._segments):
            end = self._segments[i + 1].base if i + 1 < len(self._segments) else self.next_id
            if seg.base <= rid < end:
                return seg
        return None

    def _next_base_after(self, rid: int) -> int:
        for seg in self._segments:
            if seg.base > rid:
                return seg.base
        return self.next_id


def _crc(rid: int, seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Qq", rid, seq)))


def _read_record(f: BinaryIO) -> Record | None:
    """The record at the file position, or None at the end or at a torn/corrupt record."""
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    length, crc, rid, seq = _HEADER.unpack(head)
    if length > _MAX_PAYLOAD:
        return None
    payload = f.read(length)
    if len(payload) < length or _crc(rid, seq, payload) != crc:
        return None
    return Record(rid, seq, payload)


def _scan(path: Path) -> tuple[int, int]:
    """(number of intact records, bytes they occupy) from the start of a segment file."""
    count = good = 0
    with path.open("rb") as f:
        while _read_record(f) is not None:
            count += 1
            good = f.tell()
    return count, good


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
