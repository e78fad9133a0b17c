"""Fault-injection fixtures: daemons as processes, a PLC that publishes triggers, a small disk, a tally.

Daemons run as processes with their JSON log in a file; the tally counts what an independent subscriber received.

Every fault test runs the real daemon (`python -m edge run`) against the real Mosquitto of tests/conftest.py and
counts verdicts by `seq` from a separate subscriber, the way a line integrator would check the promise "every frame
gets exactly one verdict". Durations are short in CI; `INSPECTD_FAULTS=full` runs the scenarios at the lengths the
README's "Faults survived" table quotes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge.bundle import Bundle
from edge.mqtt.connection import stop_loop
from tests.bundles import make_tiny_bundle
from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, ROOT, daemon_cmd

FULL = os.environ.get("INSPECTD_FAULTS") == "full"


def scale(ci: float, full: float) -> float:
    """A duration or count: the short CI value, or the full scenario's with INSPECTD_FAULTS=full."""
    return full if FULL else ci


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A tiny real bundle shared by every fault test."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"))


class Daemon:
    """`inspectd run` as a subprocess; its stderr (JSON log lines) goes to a file that tests read while it runs.

    A file, not a pipe: a daemon logging faster than a test reads a pipe would block on a full pipe and look hung.
    """

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None, argv: list[str] | None = None):
        self.log_path = config.parent / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv or daemon_cmd(config, *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log,
            env={**os.environ, **(env or {})},
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every JSON log line so far (of event `name`)."""
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if name is None or event.get("event") == name:
                        out.append(event)
        return out

    def text(self) -> str:
        """The whole stderr so far (for assertion messages)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_event(self, name: str, timeout: float = 30.0, predicate: Callable[[dict[str, Any]], bool] | None = None,
                   ) -> dict[str, Any]:
        """The first log event `name` (matching `predicate`); fails the test after `timeout` or if the daemon exits."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(name):
                if predicate is None or predicate(event):
                    return event
            if self.proc.poll() is not None and not any(
                predicate is None or predicate(e) for e in self.events(name)
            ):
                pytest.fail(f"daemon exited {self.proc.returncode} before logging {name}:\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {name} within {timeout} s:\n{self.text()[-4000:]}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        """Send `signum` if the process still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code; fails the test (and kills the daemon) if it does not exit within `timeout`."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f"daemon did not exit within {timeout} s:\n{self.text()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    """Factory of subprocess daemons; any still running at the end of the test are killed."""
    started: list[Daemon] = []

    def start(config: Path, *args: str, **kwargs: Any) -> Daemon:
        daemon = Daemon(config, *args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@dataclass
class Plc:
    """A PLC-like MQTT 5 client that publishes triggers and keeps each one's PUBACK reason from the broker."""

    client: mqtt.Client
    acks: dict[str, str] = field(default_factory=dict)  # part_id -> PUBACK reason ("Success", "No matching ...")

    def trigger(self, part_id: str | None = None, payload: bytes | None = None, timeout: float = 10.0) -> str:
        """Publish one trigger (QoS 1) and wait for the broker's PUBACK; returns its reason."""
        body = payload if payload is not None else json.dumps({"part_id": part_id}).encode()
        info = self.client.publish(f"{PREFIX}/trigger", body, qos=1)
        info.wait_for_publish(timeout)
        reason = self._reasons.pop(info.mid, "Success")
        if part_id is not None:
            self.acks[part_id] = reason
        return reason

    def __post_init__(self) -> None:
        self._reasons: dict[int, str] = {}

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
            self._reasons[mid] = str(reason)

        self.client.on_publish = on_publish


@pytest.fixture
def plc(broker: Broker) -> Iterator[Plc]:
    """A connected trigger publisher."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plc-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *_a: connected.set()
    plc = Plc(client)
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    assert connected.wait(10)
    yield plc
    client.disconnect()
    stop_loop(client)


@dataclass
class Tally:
    """What an independent subscriber saw of the `<prefix>/result` stream, by seq."""

    received: int  # messages, duplicates included
    unique: int  # distinct seqs
    gaps: list[int]  # seqs missing below the highest one seen
    different_duplicates: list[int]  # seqs that arrived twice with different payloads
    in_order: bool  # first deliveries never go backwards
    by_seq: dict[int, dict[str, Any]]


def tally(results: list[dict[str, Any]], first: int = 0) -> Tally:
    """Count what a subscriber received, from seq `first` on."""
    by_seq: dict[int, dict[str, Any]] = {}
    different: list[int] = []
    order: list[int] = []
    for r in results:
        seq = r["seq"]
        if seq in by_seq:
            if by_seq[seq] != r:
                different.append(seq)
            continue
        by_seq[seq] = r
        order.append(seq)
    top = max(by_seq, default=first - 1)
    gaps = [s for s in range(first, top + 1) if s not in by_seq]
    return Tally(len(results), len(by_seq), gaps, different, order == sorted(order), by_seq)


def python_cmd(code: str, *args: str) -> list[str]:
    """A `python -c` command line (daemons with a fault-injection seam)."""
    return [sys.executable, "-c", code, *args]


def record(scenario: str, *, sent: int, received: int, different: int, lost: int | None = None,
           note: str = "") -> None:
    """Append one "Faults survived" row to $INSPECTD_FAULTS_REPORT (JSON lines), when that is set.

    The README table is made from these: verdicts sent (or triggers accepted), received by the independent
    subscriber (distinct seqs, or parts with a verdict), lost, duplicated with different content.
    """
    path = os.environ.get("INSPECTD_FAULTS_REPORT")
    if not path:
        return
    row = {"scenario": scenario, "mode": "full" if FULL else "ci", "sent": sent, "received": received,
           "lost": max(0, sent - received) if lost is None else lost, "different_duplicates": different,
           "note": note}
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def record_seqs(scenario: str, sent: int, seen: Tally, note: str = "") -> None:
    """`record` from a seq tally."""
    record(scenario, sent=sent, received=seen.unique, lost=len(seen.gaps) + max(0, sent - 1 - max(seen.by_seq,
           default=-1)), different=len(seen.different_duplicates), note=note)
