"""sd_notify against a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import Config
from edge.daemon import run_daemon
from edge.notify import Notifier, stale_stages, start_watchdog, status_line
from edge.stats import STAGES, PipelineStats
from tests.bundles import blob_frame, tiny_daemon_config
from tests.conftest import Broker


class FakeSystemd:
    """A bound datagram socket that records what a service sends, like PID 1's notify socket."""

    def __init__(self, address: str | bytes, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> str | None:
        """The next datagram as text, or None if none came within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def drain(self, seconds: float) -> list[str]:
        """Every datagram that arrives during the next `seconds`."""
        out, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None:
                out.append(msg)
        return out

    def wait_for(self, needle: str, timeout: float = 3.0) -> str | None:
        """The first datagram containing `needle` within `timeout`, or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and needle in msg:
                return msg
        return None


@pytest.fixture
def path_socket() -> Iterator[FakeSystemd]:
    """A notify socket on the file system (short path: AF_UNIX paths are limited to 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="nfy", dir="/tmp"))
    path = folder / "notify"
    fake = FakeSystemd(str(path), str(path))
    yield fake
    fake.sock.close()
    path.unlink(missing_ok=True)
    folder.rmdir()


@pytest.fixture
def abstract_socket() -> Iterator[FakeSystemd]:
    """A notify socket in the Linux abstract namespace, announced as `@name` like systemd does."""
    name = f"inspectd-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode(), "@" + name)
    yield fake
    fake.sock.close()


def watchdog_env(fake: FakeSystemd, usec: int = 100_000) -> dict[str, str]:
    """The environment systemd gives a Type=notify service with WatchdogSec (here 0.1 s: pings every 50 ms)."""
    return {"NOTIFY_SOCKET": fake.env_value, "WATCHDOG_USEC": str(usec), "WATCHDOG_PID": str(os.getpid())}


class TestNotifier:
    """Notifier: the sd_notify datagrams."""

    def test_ready_reaches_a_path_socket(self, path_socket: FakeSystemd) -> None:
        """READY=1 arrives as one datagram on a file-system notify socket."""
        notifier = Notifier({"NOTIFY_SOCKET": path_socket.env_value})
        assert notifier.enabled
        notifier.ready()
        assert path_socket.recv() == "READY=1"

    def test_abstract_namespace(self, abstract_socket: FakeSystemd) -> None:
        """A leading @ addresses the abstract namespace (systemd's default notify socket form)."""
        notifier = Notifier({"NOTIFY_SOCKET": abstract_socket.env_value})
        notifier.stopping()
        assert abstract_socket.recv() == "STOPPING=1"

    def test_messages(self, path_socket: FakeSystemd) -> None:
        """status, watchdog and extend_timeout send the documented keys; a newline cannot split STATUS."""
        notifier = Notifier({"NOTIFY_SOCKET": path_socket.env_value})
        notifier.status("fps=3.0\nlast=pass")
        notifier.watchdog()
        notifier.extend_timeout(90)
        assert path_socket.drain(0.3) == ["STATUS=fps=3.0 last=pass", "WATCHDOG=1", "EXTEND_TIMEOUT_USEC=90000000"]

    def test_noop_without_socket(self) -> None:
        """Outside systemd every call does nothing and says so."""
        notifier = Notifier({})
        assert not notifier.enabled
        assert notifier.send("READY=1") is False
        notifier.ready()
        assert notifier.watchdog_interval_s is None

    def test_send_failure_is_not_raised(self, tmp_path: Path) -> None:
        """A notify socket that vanished is logged and reported, never raised into the pipeline."""
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
        assert notifier.send("READY=1") is False
        notifier.watchdog()  # still no exception

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({"WATCHDOG_USEC": "30000000"}, 15.0),  # half of WatchdogSec=30
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),  # meant for us
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
            ({"WATCHDOG_USEC": "0"}, None),  # disabled
            ({"WATCHDOG_USEC": "soon"}, None),  # garbage
            ({}, None),  # no watchdog
        ],
    )
    def test_watchdog_interval(self, env: dict[str, str], expected: float | None) -> None:
        """The ping interval is half of WATCHDOG_USEC, honouring WATCHDOG_PID."""
        assert Notifier(env).watchdog_interval_s == expected


class TestStatusLine:
    """status_line and stale_stages: the pure helpers of the watchdog."""

    def test_from_real_snapshot(self) -> None:
        """The status line shows fps, counts and the broker state from a real stats snapshot."""
        stats = PipelineStats()
        stats.verdict("pass")
        stats.verdict("fail")
        line = status_line(stats.snapshot())
        assert line.startswith("fps=")
        assert "pass=1 fail=1 error=0" in line
        assert "broker=down" in line

    def test_last_verdict(self) -> None:
        """A last verdict in the snapshot is shown as kind#seq."""
        assert "last=fail#41" in status_line({"last_verdict": {"verdict": "fail", "seq": 41}})

    def test_stale_stages(self) -> None:
        """Only stages older than the limit are stale."""
        assert stale_stages({"infer": 9.0, "capture": 10.0}, now=10.5, max_age_s=1.0) == ["infer"]


def beat(stats: PipelineStats, stages: tuple[str, ...] = STAGES, *, ago_s: float = 0.0) -> None:
    """Beat `stages` now, or `ago_s` seconds in the past (a stage that hung that long ago)."""
    for stage in stages:
        stats.beat(stage, at=time.monotonic() - ago_s)


# Beats are set explicitly instead of by a thread beating every few ms: a fresh beat stays fresh for LIMIT (far longer
# than any test), a hung stage is one whose last beat is older than LIMIT, so a loaded machine cannot starve a beater
# into a false "stalled" or delay a real one.
LIMIT = 30.0


class TestStartWatchdog:
    """start_watchdog: pings only while the pipeline beats."""

    def test_not_started_outside_systemd(self) -> None:
        """Without a notify socket there is no watchdog thread."""
        assert start_watchdog(Notifier({}), PipelineStats(), threading.Event()) is None

    def test_pings_while_pipeline_beats(self, abstract_socket: FakeSystemd) -> None:
        """A beating pipeline gets WATCHDOG=1 with a STATUS= line, and the thread ends when stopped."""
        stats, stop = PipelineStats(), threading.Event()
        beat(stats)
        thread = start_watchdog(Notifier(watchdog_env(abstract_socket)), stats, stop, max_age_s=LIMIT)
        try:
            msg = abstract_socket.wait_for("WATCHDOG=1", timeout=20)
            assert msg is not None
            assert "STATUS=fps=" in msg
        finally:
            stop.set()
        assert thread is not None
        thread.join(timeout=20)
        assert not thread.is_alive()

    def test_stalled_pipeline_stops_pings(self, path_socket: FakeSystemd) -> None:
        """When the stages stop beating the pings stop (so systemd restarts us), and resume when they beat again."""
        stats, stop = PipelineStats(), threading.Event()
        beat(stats)
        start_watchdog(Notifier(watchdog_env(path_socket)), stats, stop, max_age_s=LIMIT)
        try:
            assert path_socket.wait_for("WATCHDOG=1", timeout=20) is not None
            beat(stats, ago_s=2 * LIMIT)  # the pipeline hung long ago
            stalled = path_socket.wait_for("STATUS=stalled", timeout=20)
            assert stalled is not None
            assert "WATCHDOG=1" not in stalled
            later = [path_socket.recv(timeout=20) for _ in range(3)]
            assert all(later), f"status updates keep coming: {later}"
            assert not [m for m in later if "WATCHDOG=1" in m]
            beat(stats)  # the pipeline recovers
            assert path_socket.wait_for("WATCHDOG=1", timeout=20) is not None
        finally:
            stop.set()

    def test_one_hung_stage_stops_pings(self, path_socket: FakeSystemd) -> None:
        """A single stage that stops beating is enough to withhold the pings, and it is named."""
        stats, stop = PipelineStats(), threading.Event()
        beat(stats)
        start_watchdog(Notifier(watchdog_env(path_socket)), stats, stop, max_age_s=LIMIT)
        try:
            assert path_socket.wait_for("WATCHDOG=1", timeout=20) is not None
            beat(stats, ("infer",), ago_s=2 * LIMIT)
            stalled = path_socket.wait_for("STATUS=stalled", timeout=20)
            assert stalled is not None
            assert "stalled: infer;" in stalled
        finally:
            stop.set()

    def test_pipeline_that_never_starts(self, path_socket: FakeSystemd) -> None:
        """With no beat at all, the pings stop once the grace period is over."""
        stats, stop = PipelineStats(), threading.Event()
        start_watchdog(Notifier(watchdog_env(path_socket)), stats, stop, max_age_s=0.3)
        try:
            assert path_socket.wait_for("STATUS=stalled: all", timeout=20) is not None
        finally:
            stop.set()


class TestDaemonUnderSystemd:
    """run_daemon with a notify socket, as systemd runs it (Type=notify, WatchdogSec)."""

    def test_ready_watchdog_stopping(
        self, path_socket: FakeSystemd, broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """READY=1 after start-up, WATCHDOG=1 while frames flow, STOPPING=1 on stop, in that order."""
        monkeypatch.setenv("NOTIFY_SOCKET", path_socket.env_value)
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # pings every 0.2 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        config = daemon_config(tmp_path, broker)
        stop = threading.Event()
        result: dict[str, object] = {}
        thread = threading.Thread(target=lambda: result.update(run_daemon(config, stop=stop)), daemon=True)
        thread.start()
        try:
            assert path_socket.wait_for("READY=1", timeout=20) is not None
            ping = path_socket.wait_for("WATCHDOG=1", timeout=10)
            assert ping is not None
            assert "STATUS=fps=" in ping
        finally:
            stop.set()
            thread.join(timeout=30)
        assert path_socket.wait_for("STOPPING=1", timeout=5) is not None
        assert result.get("exit_code") == 0


def daemon_config(tmp_path: Path, broker: Broker) -> Config:
    """A daemon config: the tiny bundle, a looping paced folder of dark frames, the test broker, no metrics."""
    config = tiny_daemon_config(tmp_path, broker, [blob_frame(64, 64)] * 3)
    config.metrics.enabled = False
    return config
