"""Verdict numbering (`seq`) that stays gap-free and never repeats across daemon restarts.

The spool replays the previous run's verdicts after a restart, so the new run must continue their numbering: a
subscriber de-duplicating by `seq` would otherwise drop new verdicts, or see two different verdicts with one number.

Two small files in the spool folder:

- `seq.json` `{"next", "frame", "clean", "boot"}`: overwritten in place (one fixed-size `pwrite`, no fsync, ~µs)
  just *after* each verdict was handed to the sinks (so after its spool append), and fsynced on a clean stop. After
  a process crash on the same boot the page cache is authoritative, so the next run continues after the last verdict
  the sinks took. Numbers of frames that were in the pipeline but never published are reused, which is harmless:
  nobody saw them. `frame` does the same for `frame_id`, so it is monotonic across restarts too.
- `seq.reserved` `{"reserved"}`: fsynced (file, then folder, after the rename) before the first number of each block
  of `BLOCK` is handed out. After an unclean stop on an *earlier boot* (power cut), `seq.json` may be stale, so the
  next run starts at the reservation: a gap (next to the Last Will that announced the outage), never a duplicate.
- The spool floor: the caller passes the highest seq still in the spool plus one (`floor`). Whatever happened to
  the two files (deleted, damaged, restored from an old backup), numbering never restarts below a verdict that is
  still waiting to be sent, so no seq is published twice with different content.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edge.log import get_logger

log = get_logger(__name__)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_RECORD = 160  # bytes of seq.json, space-padded (JSON ignores trailing whitespace)


def boot_id() -> str:
    """This boot's id ("" where the kernel does not say, which makes recovery take the safe path)."""
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


class SeqCounter:
    """Hands out `seq` numbers; `path` None keeps them in memory only (from `floor`).

    Args:
        path: `seq.json` in the spool folder, or None.
        floor: The lowest acceptable next seq: the highest seq still in the spool plus one.
    """

    BLOCK = 1000

    def __init__(self, path: Path | None, floor: int = 0) -> None:
        self.path = path
        self._boot = boot_id()
        self.frame_base = 0  # added to the source's frame ids (which restart at 0) so frame_id never goes back
        recovered = self._recover() if path is not None else 0
        if floor > recovered:
            log.warning("seq_resumed_from_spool", next_seq=floor, recorded=recovered,
                        note="seq state older than the spool (missing or stale): continuing after the spooled verdicts")
        self.next = max(recovered, floor)
        self._reserved = self.next
        self._frame_next = self.frame_base
        self._write_failed = False
        self._fd: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    @property
    def _reserved_path(self) -> Path:
        if self.path is None:
            msg = "an in-memory SeqCounter has no reservation file"
            raise RuntimeError(msg)
        return self.path.with_name(self.path.stem + ".reserved")

    def _recover(self) -> int:
        state = _read(self.path)  # type: ignore[arg-type]
        reserved = _read(self._reserved_path)
        if state is not None:
            self.frame_base = int(state.get("frame", 0))
        if state is not None and (state.get("clean") or (self._boot and state.get("boot") == self._boot)):
            if not state.get("clean"):
                log.warning("seq_resumed_after_crash", next_seq=state["next"], note="same boot: exact continuation")
            return int(state["next"])
        if reserved is not None:
            log.warning("seq_resumed_after_unclean_reboot", next_seq=reserved["reserved"],
                        note="seq.json may be stale after a power cut; continuing past the reservation (a gap)")
            return int(reserved["reserved"])
        return int(state["next"]) if state is not None else 0

    def take(self) -> int:
        """The next seq (capture thread); reserves a new block on disk first when the current one is used up."""
        if self.next >= self._reserved:
            self._reserved = self.next + self.BLOCK
            if self.path is not None:
                try:
                    _write(self._reserved_path, {"reserved": self._reserved}, fsync=True)
                except OSError as exc:  # disk full: keep judging; only the power-cut path loses its guard
                    log.error("seq_state_write_failed", path=str(self._reserved_path), error=str(exc),
                              effect="after a power cut seq may restart from the spool's last verdict")
        seq, self.next = self.next, self.next + 1
        return seq

    def publishing(self, seq: int, frame_id: int | None = None) -> None:
        """Record that `seq` (of the frame `frame_id`) reached the sinks (publish thread): a crash never reuses it."""
        if frame_id is not None:
            self._frame_next = frame_id + 1
        self._put({"next": seq + 1, "frame": self._frame_next, "clean": False, "boot": self._boot}, fsync=False)

    def close(self, *, clean: bool = True) -> None:
        """Release the file; with `clean`, first record the exact next seq (every issued seq was published)."""
        if clean:
            self._put({"next": self.next, "frame": self._frame_next, "clean": True, "boot": self._boot}, fsync=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _put(self, data: dict[str, Any], *, fsync: bool) -> None:
        """Overwrite the state in place: a fixed-size record, so no truncate and no rename per verdict."""
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, json.dumps(data).ljust(_RECORD).encode("ascii"), 0)
            if fsync:
                os.fsync(self._fd)
        except OSError as exc:
            if not self._write_failed:
                log.error("seq_state_write_failed", path=str(self.path), error=str(exc),
                          effect="a restart continues from the spool's last verdict instead")
            self._write_failed = True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            return None  # created, nothing published yet
        data = json.loads(text)
        int(data.get("next", data.get("reserved")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("seq_state_unreadable", path=str(path), error=str(exc))
        return None
    return data  # type: ignore[no-any-return]


def _write(path: Path, data: dict[str, Any], *, fsync: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if fsync:  # the rename itself: without this a power cut can bring back the older file
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
