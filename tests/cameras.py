"""Simulated cameras that speak the real interfaces, for tests; every process is bounded and stopped by its PID.

- `FakeGigECamera`: Aravis' `arv-fake-gv-camera-0.8` (Debian `aravis-tools`), a GigE Vision camera answering GVCP
  and streaming GVSP over UDP on loopback. It can only listen on 127.0.0.1:3956, so two test sessions on one box
  would fight over the port: a file lock (`/tmp/inspectd-fake-gige.lock`) makes them take turns.
- `viky_cti()`: the `genicam` wheel's simulated GenTL producer (three Viky cameras).
- `RtspServer`: GStreamer's RTSP server (Debian `gir1.2-gst-rtsp-server-1.0`) serving a live test pattern as
  RTP/JPEG, run as a child process (tests/rtsp_server.py) so a test can stop and start it like a real IP camera.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

ARV_FAKE = shutil.which("arv-fake-gv-camera-0.8") or "/usr/bin/arv-fake-gv-camera-0.8"
GVCP = ("127.0.0.1", 3956)
LOCK_PATH = Path("/tmp/inspectd-fake-gige.lock")
LOCK_WAIT_S = 300.0
HERE = Path(__file__).resolve().parent


def _has_aravis() -> bool:
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis  # noqa: F401
    except (ImportError, ValueError):
        return False
    return True


def require_aravis() -> None:
    """Skip unless the fake camera binary and the Aravis typelib through PyGObject are installed."""
    if not os.access(ARV_FAKE, os.X_OK):
        pytest.skip(f"{ARV_FAKE} not found: apt-get install aravis-tools")
    if not _has_aravis():
        pytest.skip("Aravis 0.8 through PyGObject not available: apt-get install gir1.2-aravis-0.8, "
                    "pip install 'inspectd[genicam]'")


def viky_cti() -> Path:
    """The genicam wheel's simulated GenTL producer; skip when the wheel (or harvesters) is missing."""
    spec = importlib.util.find_spec("genicam")
    if spec is None or spec.origin is None or importlib.util.find_spec("harvesters") is None:
        pytest.skip("harvesters + genicam not installed: pip install 'inspectd[genicam]'")
    cti = Path(spec.origin).parent / "viky.cti"
    if not cti.is_file():
        pytest.skip(f"{cti} missing from the genicam wheel")
    return cti


def _discovery_answered(timeout: float) -> bool:
    """Send one GVCP DISCOVERY_CMD to the fake camera and wait for its ACK."""
    packet = struct.pack(">BBHHH", 0x42, 0x01, 0x0002, 0, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, GVCP)
        try:
            data, _ = sock.recvfrom(1024)
        except OSError:
            return False
    return len(data) >= 8 and struct.unpack(">H", data[2:4])[0] == 0x0003  # DISCOVERY_ACK


class _Child:
    """A simulator process: started, waited on until it answers, killed by PID (as a camera losing power)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, cmd: list[str], ready: Callable[[], bool], what: str, timeout: float,
               exit_reasons: dict[int, str] | None = None) -> None:
        """Start `cmd` (output to the log) and return once `ready()`; fail (or skip, per exit code) otherwise."""
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None and exit_reasons and code in exit_reasons:
                pytest.skip(f"{exit_reasons[code]}: {self.log_path.read_text()[-300:]}")
            if code is not None:
                pytest.fail(f"{what} exited with {code}: {self.log_path.read_text()[-2000:]}")
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"{what} was not ready within {timeout:g} s")

    def stop(self) -> None:
        """Kill the process (SIGKILL: a camera losing power says nothing either)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None


class FakeGigECamera(_Child):
    """arv-fake-gv-camera-0.8 on loopback; `stop()` / `start()` unplug and plug it back (same serial number)."""

    address = GVCP[0]

    def __init__(self, workdir: Path, serial: str = "INSPECTD1", lost_per_thousand: int = 0) -> None:
        require_aravis()
        super().__init__(workdir / f"fake-gige-{serial}.log")
        self.serial = serial
        self.lost_per_thousand = lost_per_thousand  # GVSP packets the camera "loses" on purpose
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Take the box-wide turn for 127.0.0.1:3956 (waits for another session's fake camera to finish)."""
        self._lock = LOCK_PATH.open("a")
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another session held {LOCK_PATH} for over {LOCK_WAIT_S:g} s")
                time.sleep(0.2)

    def start(self, timeout: float = 10.0) -> None:
        """Start the camera and return once it answers GVCP discovery."""
        if self.running:
            return
        if self._lock is None:
            self.lock()
        cmd = [ARV_FAKE, "-i", "lo", "-s", self.serial, "-r", str(self.lost_per_thousand)]
        self._spawn(cmd, lambda: _discovery_answered(0.2), f"{ARV_FAKE} (GVCP discovery)", timeout)

    def close(self) -> None:
        """Stop and give the turn to the next session."""
        self.stop()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RtspServer(_Child):
    """GStreamer's RTSP server on 127.0.0.1:`port`, mount /test: a live 10 fps test pattern as RTP/JPEG."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir / "rtsp-server.log")
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and return once it accepts TCP connections (skip if GStreamer's server is missing)."""
        cmd = [sys.executable, str(HERE / "rtsp_server.py"), str(self.port)]
        missing = {3: "GStreamer RTSP server not available"}
        self._spawn(cmd, self._listening, "tests/rtsp_server.py", timeout, missing)

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False
