"""`inspectd view` and the drawing helpers: the real daemon, a real ZeroMQ stream, a real PNG checked by its pixels."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Config, DebugConfig
from edge.sinks.zmq_debug import DebugSink
from edge.tools import render
from edge.tools.viewer import Viewer
from edge.verdict import Inspection, Verdict
from tests.bundles import blob_frame, make_tiny_bundle

FRAME = 128  # stream frames are 128x128; the tiny bundle's model input is 64x64
BLOB = (40, 30, 40, 30)  # x, y, w, h of the white "defect" in every failing frame
WIDTH = 256  # --width of the rendered view: 2x the frame


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_stream(folder: Path, n: int = 12) -> None:
    """A folder of dark 128x128 frames; all but every fourth carry the white blob (fail)."""
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), blob_frame(FRAME, FRAME, None if i % 4 == 3 else BLOB))


def daemon_config(tmp_path: Path, endpoint: str, **source: object) -> Config:
    """The daemon on the stream folder with the tiny bundle, MQTT off, debug stream on `endpoint`."""
    return Config(
        model={"bundle": tmp_path / "bundle", "threads": 1},
        source={"kind": "folder", "uri": str(tmp_path / "stream"), "glob": "*.png", **source},
        mqtt={"enabled": False, "spool_dir": tmp_path / "spool"},
        debug={"enabled": True, "bind": endpoint, "fps": 20.0},
        metrics={"enabled": False},
    )


def view_cmd(endpoint: str, out: Path, *extra: str) -> list[str]:
    """`inspectd view ENDPOINT --snapshot OUT ...` as a subprocess argv."""
    return [sys.executable, "-m", "edge", "view", endpoint, "--snapshot", str(out), "--width", str(WIDTH), *extra]


def publish_frame(sink: DebugSink, seq: int, *, fail: bool = True) -> None:
    """Publish one tiny-bundle-like inspection straight into a sink."""
    frame = blob_frame(FRAME, FRAME, BLOB if fail else None)
    amap = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA).mean(axis=2).astype(np.float32) / 127.5
    v = Verdict(seq=seq, frame_id=seq, ts=time.time(), outcome="fail" if fail else "pass",
                score=float(amap.max()), threshold=1.0, latency_ms=2.0, model={"name": "t", "hash": "h"},
                source="cam0")
    sink.publish(Inspection(v, frame=frame, anomaly_map=amap))


class TestRender:
    """The pure drawing helpers."""

    def test_blend_colours_hot_pixels_only(self) -> None:
        """Where the map is 0 the frame is unchanged; where it is far above threshold the colour map's red shows."""
        frame = np.full((40, 40, 3), 128, np.uint8)
        amap = np.zeros((20, 20), np.float32)
        amap[:10, :10] = 2.0
        out = render.blend_heatmap(frame, amap)
        assert np.array_equal(out[30:, 30:], frame[30:, 30:])
        hot = out[:16, :16].reshape(-1, 3).mean(axis=0)
        assert hot[2] > hot[0] + 20  # red over blue (BGR)

    def test_blend_does_not_modify_input(self) -> None:
        """The frame passed in is left untouched."""
        frame = np.zeros((8, 8, 3), np.uint8)
        render.blend_heatmap(frame, np.full((8, 8), 2.0, np.float32))
        assert not frame.any()

    @pytest.mark.parametrize(
        ("kind", "channel"),
        [
            ("pass", 1),  # green banner
            ("fail", 2),  # red banner
        ],
    )
    def test_banner_colour(self, kind: str, channel: int) -> None:
        """The banner's dominant colour says the verdict."""
        header = {"seq": 1, "verdict": kind, "score": 0.5, "threshold": 1.0, "regions": []}
        img = render.render_frame(np.zeros((50, 80, 3), np.uint8), None, header, width=400)
        band = img[: render.BANNER_H].reshape(-1, 3)
        assert np.argmax(np.median(band, axis=0)) == channel

    def test_regions_scaled_to_view(self) -> None:
        """Region boxes in frame pixels land at the same place on a view twice the frame's width."""
        header = {"seq": 1, "verdict": "fail", "score": 2.0, "regions": [{"bbox": [10, 10, 20, 20], "max_score": 2}]}
        img = render.render_frame(np.zeros((50, 50, 3), np.uint8), None, header, width=100, banner=False, overlay=False)
        yellow = np.all(img == render.REGION_COLOUR, axis=2)
        ys, xs = np.nonzero(yellow)
        assert xs.min() == 20 and ys.min() == 20 and xs.max() <= 60 and ys.max() <= 60

    def test_failed_strip_and_contact_sheet_shapes(self) -> None:
        """The strip is as wide as asked; the contact sheet tiles panels into rows."""
        thumbs = [np.full((30, 40, 3), i * 40, np.uint8) for i in range(3)]
        assert render.failed_strip(thumbs, width=300, n=5).shape[1] == 300
        sheet = render.contact_sheet(thumbs, columns=2, width=200)
        assert sheet.shape[1] == 200 and sheet.shape[0] > 2 * 30


class TestViewSnapshot:
    """`inspectd view --snapshot` as a subprocess against the real daemon."""

    def test_daemon_and_snapshot_show_overlay(self, tmp_path: Path) -> None:
        """The daemon's debug stream rendered by `inspectd view --snapshot` shows heatmap, boxes, banner and strip."""
        make_tiny_bundle(tmp_path / "bundle", threshold=0.5)
        write_stream(tmp_path / "stream")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out = tmp_path / "view.png"
        # The viewer starts first and waits: ZeroMQ connects whenever the daemon binds (slow joiner covered by loop).
        viewer = subprocess.Popen(view_cmd(endpoint, out, "--frames", "6", "--timeout", "30"),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        from edge.daemon import run_daemon

        stop = threading.Event()
        result: dict = {}
        daemon = threading.Thread(
            target=lambda: result.update(run_daemon(daemon_config(tmp_path, endpoint, loop=True, fps=40.0), stop=stop)),
            daemon=True,
        )
        daemon.start()
        try:
            output, _ = viewer.communicate(timeout=60)
        finally:
            stop.set()
            daemon.join(timeout=20)
            if viewer.poll() is None:
                viewer.kill()
        assert viewer.returncode == 0, output
        assert result.get("exit_code") == 0, result
        img = cv2.imread(str(out), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] == WIDTH
        banner = np.median(img[: render.BANNER_H].reshape(-1, 3), axis=0)
        assert banner[2] > 150 and banner[2] > banner[1] + 80, f"no red FAIL banner: {banner}"
        top = render.BANNER_H
        x, y, w, h = (2 * v for v in BLOB)  # frame -> view scale 2
        blob = img[top + y + 6 : top + y + h - 6, x + 6 : x + w - 6].reshape(-1, 3).astype(int).mean(axis=0)
        assert blob[2] > blob[0] + 40, f"no heatmap red where the defect is: {blob}"
        dark = img[top + 200 : top + 250, 180:250].reshape(-1, 3).astype(int).mean(axis=0)
        assert dark[0] > dark[2], f"the dark background should be tinted blue (low anomaly): {dark}"
        assert np.all(img[top : top + 2 * FRAME] == render.REGION_COLOUR, axis=2).sum() > 100, "no region box"
        strip = img[top + 2 * FRAME + 18 :]
        assert strip.shape[0] > 20 and strip.reshape(-1, 3).std(axis=0).max() > 10, "failed-frame strip is empty"

    def test_snapshot_over_curve(self, tmp_path: Path) -> None:
        """With CURVE keys on both sides the viewer receives; the client key must be among the allowed ones."""
        import zmq.auth

        server_pub, server_sec = zmq.auth.create_certificates(tmp_path, "server")
        clients = tmp_path / "clients"
        clients.mkdir()
        client_pub, client_sec = zmq.auth.create_certificates(tmp_path, "viewer")
        Path(client_pub).rename(clients / "viewer.key")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        out = tmp_path / "curve.png"
        config = DebugConfig(enabled=True, bind=endpoint, fps=50, curve_secret_key=Path(server_sec),
                             curve_clients_dir=clients)
        cmd = view_cmd(endpoint, out, "--frames", "2", "--timeout", "20", "--curve-server-key", server_pub,
                       "--curve-client-key", client_sec)
        viewer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with DebugSink(config) as sink:
            seq = 0
            while viewer.poll() is None and seq < 2000:
                publish_frame(sink, seq)
                seq += 1
                time.sleep(0.02)
        output = viewer.communicate(timeout=30)[0]
        assert viewer.returncode == 0, output
        assert cv2.imread(str(out)) is not None

    def test_snapshot_times_out_without_daemon(self, tmp_path: Path) -> None:
        """With nothing publishing, the snapshot mode exits 1 with a message naming the endpoint."""
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        proc = subprocess.run(view_cmd(endpoint, tmp_path / "x.png", "--timeout", "0.5"), capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 1
        assert endpoint in proc.stderr and "debug" in proc.stderr
        assert not (tmp_path / "x.png").exists()


class TestViewer:
    """The Viewer object against a real DebugSink."""

    def test_survives_daemon_restart(self) -> None:
        """After the publisher goes away the view says "waiting", and frames flow again when it comes back."""
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        viewer = Viewer(endpoint, width=WIDTH, gap_s=0.3)
        try:
            for round_ in range(2):
                with DebugSink(DebugConfig(enabled=True, bind=endpoint, fps=50)) as sink:
                    before = viewer.received
                    deadline = time.monotonic() + 15
                    seq = round_ * 1000
                    while viewer.received <= before and time.monotonic() < deadline:
                        publish_frame(sink, seq)
                        seq += 1
                        viewer.poll(50)
                        received_at = time.monotonic()  # no later than gap_s after the last arrival, however loaded
                    assert viewer.received > before, f"no frames in round {round_}"
                    assert not viewer.stale(received_at)
                    live = viewer.view(received_at)
                # the publisher is gone: the view turns stale once gap_s passed without a frame
                deadline = time.monotonic() + 15
                while not viewer.stale() and time.monotonic() < deadline:
                    viewer.poll(50)
                assert viewer.stale()
                waiting = viewer.view()
                main = waiting[: live.shape[0] - 60]
                # the waiting screen is the last view dimmed to 35 %: far darker than the live one
                assert main.mean() < 0.6 * live[: live.shape[0] - 60].mean()
        finally:
            viewer.close()

    def test_overlay_toggle_and_failed_strip(self) -> None:
        """Overlay off shows the plain frame; failed frames fill the strip and passes do not."""
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        viewer = Viewer(endpoint, width=WIDTH, strip=4)
        seq = 0

        def show(sink: DebugSink, *, fail: bool, retry: bool = False) -> None:
            """Publish one frame and wait until the viewer shows it (`retry`: republish until the SUB is joined)."""
            nonlocal seq
            seq += 1
            publish_frame(sink, seq, fail=fail)
            deadline = time.monotonic() + 15
            while (viewer.shown is None or viewer.shown.header["seq"] < seq) and time.monotonic() < deadline:
                if viewer.poll(50) == 0 and retry:
                    seq += 1
                    publish_frame(sink, seq, fail=fail)
            assert viewer.shown is not None and viewer.shown.header["seq"] == seq, f"frame {seq} never shown"

        try:
            with DebugSink(DebugConfig(enabled=True, bind=endpoint, fps=100)) as sink:
                show(sink, fail=False, retry=True)  # ZeroMQ's slow joiner: frames before the subscription are lost
                for _ in range(3):
                    show(sink, fail=False)
                assert len(viewer.failed) == 0, "a pass went into the failed-frame strip"
                passes_only = viewer.view()
                for i in range(3):
                    show(sink, fail=True)
                    assert len(viewer.failed) == i + 1
                    show(sink, fail=False)
                    assert len(viewer.failed) == i + 1, "a pass went into the failed-frame strip"
                show(sink, fail=True)
                assert len(viewer.failed) == 4
                for _ in range(3):  # the strip keeps the last `strip` failures, oldest dropped
                    show(sink, fail=True)
                assert len(viewer.failed) == 4
            with_overlay = viewer.view()
            viewer.overlay = False
            plain = viewer.view()
        finally:
            viewer.close()
        assert viewer.shown is not None and viewer.shown.header["verdict"] == "fail"
        top = render.BANNER_H
        x, y, w, h = (2 * v for v in BLOB)
        blob_plain = plain[top + y + 6 : top + y + h - 6, x + 6 : x + w - 6].astype(int).mean(axis=(0, 1))
        blob_over = with_overlay[top + y + 6 : top + y + h - 6, x + 6 : x + w - 6].astype(int).mean(axis=(0, 1))
        assert blob_plain.min() > 200  # white blob, no tint
        assert blob_over[2] - blob_over[0] > 40  # tinted red
        cell = WIDTH // 4  # strip=4 cells across the view's width, 3:4 high, at the bottom of the view
        strip_h = round(cell * 0.75)
        assert (passes_only[-strip_h:] == 30).all(), "passes drew into the failed-frame strip"
        thumbs = [with_overlay[-strip_h:, i * cell : (i + 1) * cell] for i in range(4)]
        assert all(t.std() > 10 for t in thumbs), "the strip should hold four failed frames"
