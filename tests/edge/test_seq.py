"""Verdict numbering across restarts: the spool floor, the durable reservation, frame_id continuity."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edge import seq as seq_module
from edge.seq import SeqCounter


def test_floor_from_the_spool_wins_over_stale_state(tmp_path: Path) -> None:
    """seq.json behind the spool (restored from an old backup, or deleted): numbering continues after the spool."""
    counter = SeqCounter(tmp_path / "seq.json")
    for _ in range(5):
        counter.publishing(counter.take(), 0)
    counter.close()
    assert SeqCounter(tmp_path / "seq.json").next == 5
    assert SeqCounter(tmp_path / "seq.json", floor=41).next == 41
    (tmp_path / "seq.json").unlink()
    (tmp_path / "seq.reserved").unlink()
    assert SeqCounter(tmp_path / "seq.json", floor=41).next == 41


def test_reservation_rename_is_made_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block reservation is fsynced, renamed, and its folder fsynced: a power cut cannot bring back the old one."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(seq_module.os, "fsync", fsync)
    counter = SeqCounter(tmp_path / "seq.json")
    counter.take()  # the first number reserves a block
    assert synced == ["file", "dir"]
    assert json.loads((tmp_path / "seq.reserved").read_text()) == {"reserved": SeqCounter.BLOCK}


def test_frame_id_base_continues(tmp_path: Path) -> None:
    """The next run's frame ids start after the last published frame id."""
    counter = SeqCounter(tmp_path / "seq.json")
    counter.publishing(counter.take(), 17)
    counter.close()
    assert SeqCounter(tmp_path / "seq.json").frame_base == 18
