"""Frame sources with real OpenCV: folders, video files, and a live (FFmpeg) source that loses its stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from structlog.testing import capture_logs

from edge.config import SourceConfig
from edge.errors import SourceError
from edge.sources import Frame, check_image, open_source
from edge.sources.live import LiveSource, gstreamer_available, redact
from edge.stats import PipelineStats


def write_video(path: Path, n: int, size: int = 32) -> None:
    """Write an MJPG AVI of `n` frames of rising grey levels."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size, size))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size, size, 3), 10 * i, np.uint8))
    writer.release()


def read_all(source: object, limit: int = 1000, timeout: float = 5.0) -> list[Frame]:
    """Read frames until `limit`, `timeout` or the end of the source."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < limit and time.monotonic() < deadline and not source.finished:  # type: ignore[attr-defined]
        frame = source.read(0.1)  # type: ignore[attr-defined]
        if frame is not None:
            frames.append(frame)
    return frames


class TestCheckImage:
    """check_image."""

    @pytest.mark.parametrize(
        ("image", "fragment"),
        [
            (None, "could not be read"),  # decoder gave nothing
            (np.zeros((0, 0, 3), np.uint8), "empty frame"),  # zero-size
            (np.zeros((8, 8, 4), np.uint8), "4 channels"),  # BGRA
            (np.zeros((8, 8, 2), np.uint8), "2 channels"),  # odd channel count
            (np.zeros((8, 8, 3), np.uint16), "16-bit"),  # 16-bit PNG / raw sensor
            (np.zeros((8, 8, 3), np.float32), "32-bit"),  # float image
        ],
    )
    def test_rejects(self, image: np.ndarray | None, fragment: str) -> None:
        """Frames the model cannot judge are refused with a reason naming the problem."""
        out, error = check_image(image)
        assert out is None and error is not None and fragment in error

    def test_grey_becomes_bgr(self) -> None:
        """A mono camera's grey frame is expanded to 3 channels, not refused."""
        out, error = check_image(np.full((4, 5), 7, np.uint8))
        assert error is None and out is not None and out.shape == (4, 5, 3) and int(out[0, 0, 2]) == 7


class TestFolderSource:
    """FolderSource."""
    def test_sorted_glob_relative_and_loop(self, tmp_path: Path) -> None:
        """Files matching the glob come in sorted order, the uri is relative to base_dir, and loop starts over."""
        folder = tmp_path / "cfg" / "frames"
        folder.mkdir(parents=True)
        for name, level in [("b.png", 2), ("a.png", 1), ("c.jpg", 3)]:
            cv2.imwrite(str(folder / name), np.full((8, 8, 3), level * 40, np.uint8))
        config = SourceConfig(kind="folder", uri="frames", glob="*.png", loop=True)
        source = open_source(config, tmp_path / "cfg")
        frames = read_all(source, limit=5)
        assert [int(f.image[0, 0, 0]) for f in frames] == [40, 80, 40, 80, 40]  # type: ignore[index]
        assert [f.frame_id for f in frames] == [0, 1, 2, 3, 4]
        assert all(f.source == "cam0" and f.ts > 1e9 for f in frames)

    def test_missing_folder_or_no_files(self, tmp_path: Path) -> None:
        """A missing folder or one without matching files is a SourceError naming the path."""
        with pytest.raises(SourceError, match="does not exist"):
            open_source(SourceConfig(kind="folder", uri=str(tmp_path / "nope")))
        with pytest.raises(SourceError, match="no files matching"):
            open_source(SourceConfig(kind="folder", uri=str(tmp_path), glob="*.png"))

    def test_fps_pacing(self, tmp_path: Path) -> None:
        """Fps paces reads like a camera and marks the source live."""
        for i in range(6):
            cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((4, 4, 3), np.uint8))
        source = open_source(SourceConfig(kind="folder", uri=str(tmp_path), fps=50))
        t0 = time.monotonic()
        frames = read_all(source)
        assert len(frames) == 6 and source.live
        assert time.monotonic() - t0 >= 5 / 50 - 0.01


class TestVideoSource:
    """VideoSource."""
    def test_plays_and_loops(self, tmp_path: Path) -> None:
        """A video file plays to the end, and with loop starts again."""
        path = tmp_path / "v.avi"
        write_video(path, 5)
        assert len(read_all(open_source(SourceConfig(kind="video", uri=str(path))))) == 5
        looped = read_all(open_source(SourceConfig(kind="video", uri=str(path), loop=True)), limit=12)
        assert len(looped) == 12 and [f.frame_id for f in looped] == list(range(12))

    def test_unopenable(self, tmp_path: Path) -> None:
        """A file OpenCV cannot open is a SourceError."""
        (tmp_path / "v.avi").write_bytes(b"garbage")
        with pytest.raises(SourceError, match="cannot open video"):
            open_source(SourceConfig(kind="video", uri=str(tmp_path / "v.avi")))


class TestLiveSource:
    """LiveSource."""
    def test_outage_reported_and_reconnected(self, tmp_path: Path) -> None:
        """A stream that is missing, then ends, is reported once per outage and reconnected with backoff."""
        path = tmp_path / "stream.avi"
        config = SourceConfig(kind="rtsp", uri=str(path), stall_timeout_s=2, reconnect_min_s=0.05, reconnect_max_s=0.2)
        stats = PipelineStats()
        source = open_source(config, stats=stats)  # FFmpeg opens a local file like a stream URL
        assert isinstance(source, LiveSource)
        try:
            first = read_all(source, limit=1, timeout=3)
            assert first and first[0].outage and "camera cam0 lost" in (first[0].error or "")
            write_video(tmp_path / "tmp.avi", 5)
            (tmp_path / "tmp.avi").rename(path)  # appear whole, as a camera coming back
            # A slow consumer: the camera reconnects and its stream ends (the second outage) before we read again;
            # images and outage reports must still come out in capture order.
            deadline = time.monotonic() + 30
            while stats.snapshot()["camera_outages"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stats.snapshot()["camera_outages"] >= 2, "the camera did not come back and end within 30 s"
            frames: list[Frame] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (len(frames) > 1 and frames[-1].outage and not frames[-2].outage):
                frame = source.read(0.1)
                if frame is not None:
                    frames.append(frame)
            # images (older ones dropped by the 2-image buffer while we slept), then the end of stream = an outage;
            # outage reports are never dropped and keep their place in capture order
            assert frames[-1].outage and not frames[-2].outage
            assert "stream ended" in (frames[-1].error or "")
            assert source.dropped > 0
            snap = stats.snapshot()
            assert snap["camera_outages"] >= 2 and snap["camera_reconnects"] >= 1
            ids = [f.frame_id for f in [*first, *frames]]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
        finally:
            source.close()

    def test_stall_abandons_reader(self, tmp_path: Path) -> None:
        """A capture whose read blocks is declared stalled after stall_timeout_s and replaced by a fresh one."""
        path = tmp_path / "stream.avi"
        write_video(path, 3)
        opened: list[int] = []
        release = threading.Event()

        class Stuck:
            """A real capture whose reads hang after the first frame (a camera that stops sending)."""

            def __init__(self) -> None:
                self.cap = cv2.VideoCapture(str(path))
                self.reads = 0
                opened.append(1)

            def isOpened(self) -> bool:  # OpenCV's name
                return self.cap.isOpened()

            def read(self) -> tuple[bool, np.ndarray]:
                self.reads += 1
                if self.reads > 1:
                    release.wait(60)  # hangs until the test ends
                return self.cap.read()

            def release(self) -> None:
                self.cap.release()

        # 1 s: long enough that opening a file and decoding a frame fits on a loaded box, short enough for the suite
        config = SourceConfig(kind="rtsp", uri="rtsp://user:pw@cam/x", stall_timeout_s=1.0, reconnect_min_s=0.05)
        source = LiveSource(config, Stuck)
        try:
            frames = read_all(source, limit=3, timeout=30)
            assert [f.outage for f in frames] == [False, True, False]
            assert "stalled" in (frames[1].error or "") and "pw" not in (frames[1].error or "")
            assert len(opened) >= 2
        finally:
            release.set()  # first: close() waits for its readers, and a stuck one returns only once released
            source.close()

    def test_backoff_doubles_to_max_and_restarts_after_frames(self, tmp_path: Path) -> None:
        """Reconnect delays double from reconnect_min_s up to reconnect_max_s and never give up.

        They start again at the minimum once the camera delivered frames. Checked on the delays the reader waits, as
        logged, not on the wall clock.
        """
        video, missing = tmp_path / "one.avi", tmp_path / "missing.avi"
        write_video(video, 1)
        calls: list[int] = []
        enough = threading.Event()

        def opener() -> cv2.VideoCapture:
            calls.append(1)
            if len(calls) > 10:
                enough.set()
            # the 5th connection works and delivers one frame, then its stream ends; every other one finds nothing
            return cv2.VideoCapture(str(video if len(calls) == 5 else missing))

        config = SourceConfig(kind="rtsp", uri="rtsp://cam/x", reconnect_min_s=0.01, reconnect_max_s=0.16)
        with capture_logs() as logs:
            source = LiveSource(config, opener)
            try:
                assert enough.wait(30), f"only {len(calls)} connection attempts in 30 s"
            finally:
                source.close()
        delays = [e["retry_in_s"] for e in logs if e["event"] in ("camera_lost", "camera_retry")][:10]
        assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.01, 0.02, 0.04, 0.08, 0.16, 0.16])
        assert [e["event"] for e in logs if e["event"] == "camera_lost"] == ["camera_lost"] * 2  # once per outage

    def test_gstreamer_needs_opencv_with_gstreamer(self) -> None:
        """Without GStreamer in OpenCV, kind gstreamer fails with a message saying what to install."""
        if gstreamer_available():
            pytest.skip("this OpenCV has GStreamer")
        with pytest.raises(SourceError, match="without GStreamer.*JetPack"):
            open_source(SourceConfig(kind="gstreamer", uri="videotestsrc ! appsink"))

    def test_redact(self) -> None:
        """Camera credentials never reach logs or verdicts."""
        assert redact("rtsp://admin:secret@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
        assert redact("/dev/video0") == "/dev/video0"
