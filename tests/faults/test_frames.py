"""Bad files in an image folder: each is an `error` verdict naming why, and the files after it are still judged.

Issue #15 item 6 (a 74-byte PNG whose header claims 100000 x 100000 crashed the capture stage; `source.max_pixels`
is checked from the header before decoding) and the held scenario of truncated, empty, text, bit-flipped, 16-bit,
4-channel and float TIFF frames.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.config import load_config
from edge.daemon import run_daemon
from tests.bundles import blob_frame
from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, write_config
from tests.faults.conftest import record_seqs, tally

pytestmark = pytest.mark.timeout(60)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header_png(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose IHDR claims `width` x `height` grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0"))
            + png_chunk(b"IEND", b""))


def good_png() -> bytes:
    """A dark 64 x 64 frame."""
    ok, buf = cv2.imencode(".png", blob_frame(64, 64))
    assert ok
    return buf.tobytes()


def test_bad_files_each_get_an_error_verdict(bundle: Any, broker: Broker, mqtt_collector: Any,
                                            tmp_path: Path) -> None:
    """Eleven files, eight of them bad: eleven verdicts in file order, errors naming the cause, exit 0."""
    folder = tmp_path / "frames"
    folder.mkdir()
    huge = huge_header_png(100_000, 100_000)
    assert len(huge) < 80
    flipped = bytearray(good_png())
    flipped[len(flipped) // 2] ^= 0xFF
    ok, float_tiff = cv2.imencode(".tiff", np.full((32, 32), 0.5, np.float32))
    assert ok
    ok, big = cv2.imencode(".png", np.zeros((1200, 1000, 3), np.uint8))  # 1.2 MP, over max_pixels below
    assert ok
    files: list[tuple[str, bytes, str | None]] = [
        ("00-good.png", good_png(), None),
        ("01-huge-header.png", huge, "100000x100000"),
        ("02-good.png", good_png(), None),
        ("03-truncated.png", good_png()[:40], "cannot read"),
        ("04-empty.png", b"", "cannot read"),
        ("05-text.png", b"this is not an image\n", "cannot read"),
        ("06-bit-flipped.png", bytes(flipped), "cannot read"),
        ("07-16bit.png", cv2.imencode(".png", np.zeros((8, 8), np.uint16))[1].tobytes(), "16-bit"),
        ("08-rgba.png", cv2.imencode(".png", np.zeros((8, 8, 4), np.uint8))[1].tobytes(), "4 channels"),
        ("09-float.tiff", float_tiff.tobytes(), "32-bit"),
        ("10-big.png", big.tobytes(), "source.max_pixels"),
        ("11-good.png", good_png(), None),
    ]
    for name, data, _ in files:
        (folder / name).write_bytes(data)
    results = mqtt_collector(f"{PREFIX}/result")
    path = write_config(tmp_path, broker, bundle, folder, source={"max_pixels": 1_000_000})
    outcome = run_daemon(load_config(path, base_dir=tmp_path), base_dir=tmp_path)
    assert outcome["exit_code"] == 0 and outcome["published"] == len(files)
    assert results.wait_for(len(files), 10)
    got = results.json()
    record_seqs("bad files: 74-byte 100000x100000 PNG, truncated, empty, text, bit-flipped, 16-bit, RGBA, float "
                "TIFF, over max_pixels", len(files), tally(got), note="8 error verdicts naming the cause")
    assert [r["seq"] for r in got] == list(range(len(files)))
    for r, (name, _, why) in zip(got, files, strict=True):
        if why is None:
            assert r["verdict"] in {"pass", "fail"}, (name, r)
        else:
            assert r["verdict"] == "error" and why in r["error"] and name in r["error"], (name, r["error"])
