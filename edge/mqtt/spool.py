"""The on-disk store-and-forward spool: every verdict is written here first, then sent, then retired once acknowledged.

SQLite (the standard library's `sqlite3`) in WAL mode, not a hand-written log: its crash recovery is among the most
tested code there is, and a disk that fills up fails one transaction, never the file. The README ("Spool") gives the
measurements behind the choice.

- **Rows.** `records(rid INTEGER PRIMARY KEY, seq, crc, payload)`. `rid` is the spool's own numbering (one more per
  record, across restarts); the verdict's `seq` travels with it; `crc` is CRC-32 over seq and payload, so a record
  damaged on the medium is found (SQLite has no page checksums) and costs only itself.
- **Appending** is one INSERT in its own transaction, in the WAL before `append` returns: a killed *process* loses
  nothing. `spool_fsync` decides what survives a *power cut*: `always` = `synchronous=FULL` (the WAL is fsynced at
  every commit); `batch` = `NORMAL` plus an fsync of the WAL at most every 100 ms (`sync_if_due`), so a power cut
  loses at most the last 100 ms; `never` = `OFF`.
- **Acknowledging.** Acks may arrive out of order; the *watermark* (first rid not acknowledged) moves over a gap-free
  run. Rows below it are deleted, and the watermark saved in `meta`, in one transaction at most every 0.5 s and on
  close, so a crash only re-sends (same `seq`, at-least-once), never skips. The newest row is kept even when
  acknowledged: `last_seq` (the highest seq ever spooled) survives every restart, for `SeqCounter`.
- **Cap.** Beyond `max_bytes` of payload the oldest rows are deleted, counted in `dropped`, and a loud
  `spool_full_dropped_oldest` warning gives their seq range.
- **Damage.** A row whose CRC does not match, or that SQLite cannot read, is dropped, counted in `dropped` and
  logged as `spool_record_corrupt` with its seq; the rows around it are untouched. A database SQLite calls malformed
  at start-up is moved aside (`spool.db.corrupt-<unix time>`) after every readable row was copied to a fresh one.
- **Errors.** Start-up problems (a folder that is a file, a locked spool, files of the old segment format) raise
  `ConfigError`; a failed append raises `SpoolError` (the caller sends the verdict another way or stops); failed
  housekeeping (deleting acknowledged rows, an fsync) is logged as `spool_write_failed`, counted in
  `write_failures`, and retried: it can only cause re-sends.
- **One owner.** A `flock` on `spool_dir/lock` keeps a second daemon off the same spool.

All methods are thread-safe (one lock around one connection: the pipeline appends while the forwarder reads and
acknowledges).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from edge.errors import ConfigError, InspectdError
from edge.log import get_logger

log = get_logger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]
MAX_RECORD = 16 * 1024 * 1024  # a verdict is ~300 B; anything near this is a bug, refused at write time
DB_NAME = "spool.db"
_SYNCHRONOUS: dict[str, str] = {"always": "FULL", "batch": "NORMAL", "never": "OFF"}
_BATCH_FSYNC_S = 0.1
_RETIRE_EVERY_S = 0.5
_READ_AHEAD = 64
_LOG_EVERY_S = 10.0


class SpoolError(InspectdError):
    """Raised when a record cannot be written to the spool (disk full, I/O error, read-only file system)."""


@dataclass(frozen=True)
class Record:
    """One spooled verdict: the spool's record id, the verdict's seq, and the exact bytes to publish."""

    rid: int
    seq: int
    payload: bytes


def _crc(seq: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<q", seq)))


class Spool:
    """Size-capped, crash-safe queue of verdict payloads with an acknowledgement watermark (see the module docstring).

    Args:
        directory: Spool folder; created if missing. One process per folder (locked).
        max_bytes: Cap on spooled payload bytes; the oldest records are dropped (loudly) beyond it.
        fsync: What survives a power cut: `always`, `batch` (all but the last <= 100 ms) or `never`.

    Raises:
        ConfigError: the folder cannot be created or opened, another process holds it, or it holds a spool of the
            old segment-file format.
    """

    def __init__(self, directory: Path, max_bytes: int, fsync: FsyncPolicy = "batch") -> None:
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.fsync = fsync
        self.dropped = 0  # records lost (cap, damage) since this object was created
        self.write_failures = 0  # failed appends and housekeeping writes
        self.unknown_loss = False  # a database that could not be read at all was moved aside (records lost)
        self._lock = threading.Lock()
        self._lock_file = _take_lock(self.directory)
        self._wal_fd: int | None = None
        self._last_fsync = time.monotonic()
        self._dirty = False
        self._retired_at = 0.0
        self._failure_logged_at = -_LOG_EVERY_S
        try:
            self._db = self._open()
        except BaseException:
            self._lock_file.close()
            raise
        self._acked_ahead: set[int] = set()
        self._ahead: list[Record] = []  # fetched, not yet handed out; the next one is last
        self._cursor = self.watermark  # next rid to fetch
        if self.depth:
            log.info("spool_recovered", directory=str(self.directory), records=self.depth, first_id=self.watermark)

    # start-up ---------------------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        old = sorted(p.name for p in self.directory.glob("seg-*.log"))
        if old:
            msg = (
                f"mqtt.spool_dir {self.directory} holds spool files of an older inspectd ({old[0]}, ...): deliver "
                "them with that version, or move them away to start with an empty spool"
            )
            raise ConfigError(msg)
        path = self.directory / DB_NAME
        db: sqlite3.Connection | None = None
        try:
            db = self._connect(path)
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if db is None:
                msg = f"mqtt.spool_dir {self.directory}: cannot open the spool database {path.name} ({exc})"
                raise ConfigError(msg) from None
            problem = str(exc)
        except sqlite3.DatabaseError as exc:  # "file is not a database": the header itself is gone
            problem = str(exc)
        if problem != "ok" or db is None:
            db = self._salvage(path, db, problem)
        self._load_state(db)
        return db

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.fsync]}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS records (rid INTEGER PRIMARY KEY, seq INTEGER NOT NULL, "
            "crc INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        return db

    def _load_state(self, db: sqlite3.Connection) -> None:
        lo, hi = db.execute("SELECT min(rid), max(rid) FROM records").fetchone()
        saved = db.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        self.next_id = 0 if hi is None else hi + 1
        self.watermark = max(saved[0] if saved else 0, lo or 0)
        if self.watermark > self.next_id:  # cannot happen short of tampering: replay everything rather than skip
            log.warning("spool_watermark_ahead", watermark=self.watermark, next_id=self.next_id,
                        action="replaying every spooled record")
            self.watermark = lo or 0
        row = db.execute("SELECT seq FROM records WHERE rid = ?", (hi,)).fetchone() if hi is not None else None
        self.last_seq: int | None = row[0] if row else None
        self._bytes_from = self.watermark  # _bytes counts the payload of rows from this rid on
        self._bytes = db.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM records WHERE rid >= ?", (self.watermark,)
        ).fetchone()[0]

    def _salvage(self, path: Path, damaged: sqlite3.Connection | None, problem: str) -> sqlite3.Connection:
        """Copy every readable row of a damaged database into a fresh one; count and log the rest."""
        log.error("spool_database_damaged", path=str(path), problem=problem, action="copying readable records")
        rows: list[tuple[int, int, int, bytes]] = []
        lost: list[int] = []
        watermark = 0
        if damaged is not None:
            try:
                saved = damaged.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
                watermark = saved[0] if saved else 0
                lo, hi = damaged.execute("SELECT min(rid), max(rid) FROM records").fetchone()
            except sqlite3.DatabaseError:
                lo = hi = None
            if hi is not None:
                for rid in range(max(lo, watermark), hi + 1):
                    try:
                        row = damaged.execute("SELECT rid, seq, crc, payload FROM records WHERE rid = ?",
                                              (rid,)).fetchone()
                    except sqlite3.DatabaseError:
                        lost.append(rid)
                        continue
                    if row is not None:
                        rows.append(row)
            damaged.close()
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        db = self._connect(path)
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", rows)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (watermark,))
        if lost or damaged is None:
            self.dropped += len(lost)
            self.unknown_loss = damaged is None
            log.error(
                "spool_record_corrupt", path=str(path), rids=lost, seqs=[], dropped=len(lost),
                note="seq unknown: the rows could not be read" if lost else "the database could not be opened; "
                "its unacknowledged records are LOST (count unknown)", moved_to=str(aside),
            )
        return db

    # writing ----------------------------------------------------------------------------------------------------
    def append(self, seq: int, payload: bytes) -> int:
        """Write one record (in the WAL on return; fsynced per policy) and return its record id.

        Raises:
            SpoolError: the record could not be written (disk full, I/O error); nothing was stored.
            ValueError: the record is larger than MAX_RECORD (a bug upstream; a verdict is a few hundred bytes).
        """
        if len(payload) > MAX_RECORD:
            msg = f"verdict seq {seq} is {len(payload)} bytes, more than the spool's limit of {MAX_RECORD}"
            raise ValueError(msg)
        with self._lock:
            rid = self.next_id
            try:
                self._db.execute("INSERT INTO records VALUES (?, ?, ?, ?)", (rid, seq, _crc(seq, payload), payload))
            except sqlite3.Error as exc:
                self.write_failures += 1
                msg = f"spool {self.directory}: cannot store verdict seq {seq}: {exc}"
                raise SpoolError(msg) from exc
            self.next_id += 1
            self.last_seq = seq
            self._bytes += len(payload)
            self._dirty = True
            self._sync_locked(time.monotonic())
            if self._bytes > self.max_bytes:
                self._enforce_cap()  # settles acknowledged bytes first: only a real backlog drops anything
            return rid

    def _enforce_cap(self) -> None:
        """Delete the oldest records down to 7/8 of the cap (so not at every append); count and log the loss."""
        self._settle_bytes()
        if self._bytes <= self.max_bytes:
            return
        excess = self._bytes - self.max_bytes * 7 // 8
        victims: list[tuple[int, int]] = []
        freed = 0
        for rid, seq, size in self._db.execute(
            "SELECT rid, seq, length(payload) FROM records WHERE rid >= ? AND rid < ? ORDER BY rid",
            (self.watermark, self.next_id - 1),  # never the record just appended
        ):
            if freed >= excess:
                break
            victims.append((rid, seq))
            freed += size
        if not victims:
            return
        last = victims[-1][0]
        try:
            self._db.execute("DELETE FROM records WHERE rid <= ?", (last,))
        except sqlite3.Error as exc:
            self._housekeeping_failed("drop the oldest records at the cap", exc)
            return
        lost = [seq for rid, seq in victims if rid not in self._acked_ahead]
        self._bytes -= freed
        self.watermark = self._bytes_from = last + 1
        self._cursor = max(self._cursor, last + 1)
        self._ahead = [r for r in self._ahead if r.rid > last]
        self._acked_ahead = {rid for rid in self._acked_ahead if rid > last}
        self.dropped += len(lost)
        log.warning(
            "spool_full_dropped_oldest",
            directory=str(self.directory),
            max_mb=round(self.max_bytes / 1e6, 3),
            dropped=len(lost),
            dropped_total=self.dropped,
            seq_first=lost[0] if lost else None,
            seq_last=lost[-1] if lost else None,
            hint="the broker has been unreachable too long for mqtt.spool_max_mb; oldest verdicts are LOST",
        )

    def _settle_bytes(self) -> None:
        """Take the payload of rows the watermark moved past out of the byte count (lock held)."""
        if self.watermark <= self._bytes_from:
            return
        gone = self._db.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM records WHERE rid >= ? AND rid < ?",
            (self._bytes_from, self.watermark),
        ).fetchone()[0]
        self._bytes -= gone
        self._bytes_from = self.watermark

    # reading and acknowledging ------------------------------------------------------------------------------------
    def read_next(self) -> Record | None:
        """The next record not yet handed out (in rid order), or None when all have been.

        A record that fails its CRC or cannot be read is dropped (counted, logged with its seq) and skipped; so is one
        already acknowledged (after a `rewind`).
        """
        with self._lock:
            while True:
                while not self._ahead:
                    if self._cursor >= self.next_id:
                        return None
                    before = self._cursor
                    self._read_ahead()
                    if not self._ahead and self._cursor == before:
                        return None  # a read failed for now (I/O): the forwarder asks again on its next pass
                record = self._ahead.pop()
                if record.rid >= self.watermark and record.rid not in self._acked_ahead:
                    return record  # (acknowledged ones come back only after a rewind: skipped)

    def _read_ahead(self) -> None:
        """Fetch the next rows from the cursor into the read-ahead, dropping damaged ones (lock held)."""
        try:
            rows = self._db.execute(
                "SELECT rid, seq, crc, payload FROM records WHERE rid >= ? ORDER BY rid LIMIT ?",
                (self._cursor, _READ_AHEAD),
            ).fetchall()
        except sqlite3.OperationalError as exc:  # I/O error, disk full, busy: not damage; the next read retries
            self._housekeeping_failed("read spooled records", exc)
            return
        except sqlite3.DatabaseError:  # "malformed": read around the damaged page, one row at a time
            rows = self._read_one_by_one()
        if not rows:
            self._cursor = self.next_id
            return
        self._cursor = rows[-1][0] + 1
        good: list[Record] = []
        bad: list[tuple[int, int]] = []
        for rid, seq, crc, payload in rows:
            if payload is None or _crc(seq, bytes(payload)) != crc:
                bad.append((rid, seq))
            else:
                good.append(Record(rid, seq, bytes(payload)))
        if bad:
            self._drop_corrupt(bad)
        self._ahead = good[::-1]

    def _read_one_by_one(self) -> list[tuple[int, int, int, bytes | None]]:
        """Rows from the cursor one lookup at a time, so one unreadable page costs only its rows (lock held)."""
        rows: list[tuple[int, int, int, bytes | None]] = []
        rid = self._cursor
        while rid < self.next_id and len(rows) < _READ_AHEAD:
            try:
                row = self._db.execute("SELECT rid, seq, crc, payload FROM records WHERE rid = ?", (rid,)).fetchone()
            except sqlite3.OperationalError:
                break  # not damage: stop here, the next read retries
            except sqlite3.DatabaseError:
                row = (rid, -1, 0, None)
            if row is not None:
                rows.append(row)
            rid += 1
        return rows

    def _drop_corrupt(self, bad: list[tuple[int, int]]) -> None:
        """Count, log and retire damaged rows (lock held)."""
        self.dropped += len(bad)
        log.error(
            "spool_record_corrupt", directory=str(self.directory), rids=[rid for rid, _ in bad],
            seqs=[seq for _, seq in bad if seq >= 0], dropped=len(bad), dropped_total=self.dropped,
            note="the spooled verdicts named here are LOST (damaged on disk); the others are intact",
        )
        for rid, _ in bad:
            self._ack_locked(rid)
        try:
            self._db.executemany("DELETE FROM records WHERE rid = ?", [(rid,) for rid, _ in bad])
        except sqlite3.Error as exc:
            self._housekeeping_failed("delete damaged records", exc)

    def rewind(self, rid: int) -> None:
        """Hand out records from `rid` again (one that could not be sent); acknowledged ones are not re-read."""
        with self._lock:
            first_ahead = self._ahead[-1].rid if self._ahead else self._cursor
            if rid < first_ahead:
                self._cursor = max(self.watermark, rid)
                self._ahead = []

    def ack(self, rid: int) -> None:
        """Mark record `rid` delivered; advance the watermark; delete retired rows at most every 0.5 s."""
        with self._lock:
            self._ack_locked(rid)
            now = time.monotonic()
            if now - self._retired_at >= _RETIRE_EVERY_S:
                self._retire(now)

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
        return self.next_id - self._cursor + len(self._ahead)

    def size_bytes(self) -> int:
        """Payload bytes of the records not yet acknowledged (what the cap counts)."""
        with self._lock:
            self._settle_bytes()
            return int(self._bytes)

    # housekeeping -----------------------------------------------------------------------------------------------
    def sync_if_due(self) -> None:
        """`batch`: fsync the WAL when 100 ms have passed; retire acknowledged rows when due. Call it often."""
        with self._lock:
            now = time.monotonic()
            self._sync_locked(now)
            if now - self._retired_at >= _RETIRE_EVERY_S:
                self._retire(now)

    def _sync_locked(self, now: float) -> None:
        if self.fsync != "batch" or not self._dirty or now - self._last_fsync < _BATCH_FSYNC_S:
            return
        try:
            if self._wal_fd is None:
                self._wal_fd = os.open(self.directory / f"{DB_NAME}-wal", os.O_RDONLY | os.O_CLOEXEC)
            os.fsync(self._wal_fd)
        except OSError as exc:
            self._housekeeping_failed("fsync the write-ahead log", exc)
        self._dirty = False
        self._last_fsync = now

    def _retire(self, now: float) -> None:
        """Delete acknowledged rows (keeping the newest, for last_seq) and save the watermark (lock held)."""
        self._retired_at = now
        try:
            self._settle_bytes()
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM records WHERE rid < ?", (min(self.watermark, self.next_id - 1),))
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (self.watermark,))
        except sqlite3.Error as exc:
            self._housekeeping_failed("delete acknowledged records", exc)

    def _housekeeping_failed(self, what: str, exc: BaseException) -> None:
        """Log (at most every 10 s) and count a write that only keeps the spool tidy; the next call retries it."""
        self.write_failures += 1
        now = time.monotonic()
        if now - self._failure_logged_at >= _LOG_EVERY_S:
            self._failure_logged_at = now
            log.error("spool_write_failed", directory=str(self.directory), operation=what, error=str(exc),
                      failures=self.write_failures,
                      effect="acknowledged verdicts stay on disk and may be sent again after a restart")

    def close(self) -> None:
        """Retire acknowledged rows, fsync and close. The spool can be reopened by a new `Spool`."""
        with self._lock:
            if self._db is None:
                return
            self._retire(time.monotonic())
            self._dirty = True
            self._last_fsync = -1.0
            self._sync_locked(time.monotonic())
            self._db.close()
            self._db = None  # type: ignore[assignment]
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self._lock_file.close()  # releases the flock


def _take_lock(directory: Path) -> IO[str]:
    """Create the folder and take its exclusive lock; ConfigError naming the key otherwise."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock_file = (directory / "lock").open("a+")
    except OSError as exc:
        why = "it is a file, not a folder" if directory.is_file() else exc.strerror
        msg = f"mqtt.spool_dir {directory}: cannot create or write the spool folder ({why})"
        raise ConfigError(msg) from None
    try:  # two daemons appending to one spool would interleave ids: refuse the second
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock_file.close()
        msg = f"mqtt.spool_dir {directory} is in use by another inspectd process; give each daemon its own"
        raise ConfigError(msg) from None
    return lock_file
