"""Shared fixtures: a real Mosquitto broker per test, and subscribers that collect what reaches it.

The broker is the Debian `mosquitto` binary started with a config the fixture writes (no Docker, no mocks). It runs
with `persistence true` in the test's own folder, so a collector's persistent MQTT 3.1.1 session (its subscription
and the QoS 1 messages queued for it) survives `broker.stop()` / `broker.start()`: an outage test then sees every
message the publisher replays after the restart, however the two clients' reconnects race. (With `persistence
false` a publisher that reconnects first replays into a broker that has no subscriber yet, and the test flakes.)
`user root` keeps mosquitto from dropping privileges and losing access to the temp files (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
HOST = "127.0.0.1"
# The test running now, for `make test` to name when pytest dies without a report (a C library aborting: the
# faulthandler dump that names it is far above the tail a CI log keeps). Removed when the session ends normally.
RUNNING = Path(__file__).resolve().parent.parent / "var" / "pytest-running"


def pytest_sessionstart(session: pytest.Session) -> None:
    RUNNING.parent.mkdir(exist_ok=True)


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    RUNNING.write_text(nodeid + "\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    RUNNING.unlink(missing_ok=True)


def _require(binary: str, package: str) -> None:
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.skip(f"{binary} not found: install the Debian package {package} (apt-get install {package})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class Broker:
    """A real mosquitto on 127.0.0.1 with one listener; `stop()` and `start()` simulate an outage on the same port.

    Args:
        workdir: Folder for the config, the log and the persistence database.
        listener_options: Lines that follow `listener PORT 127.0.0.1` (auth, TLS); per-listener settings are on.
        scheme: `mqtt` or `mqtts`, for `url`.
    """

    host = HOST

    def __init__(self, workdir: Path, listener_options: str = "allow_anonymous true", scheme: str = "mqtt") -> None:
        _require(MOSQUITTO, "mosquitto")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"{scheme}://{self.host}:{self.port}"
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.config_path.write_text(
            "per_listener_settings true\n"
            "persistence true\n"
            "set_tcp_nodelay true\n"  # as README recommends: no Nagle delay on small packets (triggers, verdicts)
            f"persistence_location {workdir}/\n"
            "user root\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n"
            f"listener {self.port} {self.host}\n"
            f"{listener_options}\n",
            encoding="utf-8",
        )
        self.tls: TlsFiles | None = None  # set by the tls_broker fixture
        self.socket_path: Path | None = None  # set by the unix_broker fixture
        self.username = ""  # set by the password_broker fixture
        self.password = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto (again, on the same port) and return once the port accepts connections."""
        if self.running:
            return
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                msg = f"mosquitto exited with {self._proc.returncode}; log:\n{self.log()}"
                raise RuntimeError(msg)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        msg = f"mosquitto did not accept connections on {self.host}:{self.port} within {timeout} s; log:\n{self.log()}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        """Terminate mosquitto (SIGTERM: clients see the connection drop; sessions are saved)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None

    def log(self) -> str:
        """The broker's log so far (for assertion messages)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def wait_subscribed(self, topic: str, timeout: float = 30.0) -> bool:
        """Wait until some client has subscribed to exactly `topic` (the broker logs subscriptions)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():  # "<time>: <client id> <qos> <topic>" (log_type subscribe)
                parts = line.split()
                if len(parts) == 4 and parts[2].isdigit() and parts[3] == topic:
                    return True
            time.sleep(0.05)
        return False


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: a CA, a server cert for IP:127.0.0.1 and a client cert with an encrypted key."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_password: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA plus server and client certificates, made once per session with the openssl CLI (EC P-256)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found: install the Debian package openssl")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    _openssl("req", "-x509", *ec, "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=inspectd-test-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    _openssl("req", *ec, "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=d)
    password = "key-secret"
    _openssl("req", *ec, "-keyout", "client.key", "-passout", f"pass:{password}", "-out", "client.csr",
             "-subj", "/CN=inspectd-client", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.crt", "-days", "2", cwd=d)
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key", password)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A plain anonymous Mosquitto on a free loopback port, started for this test and stopped after it."""
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Broker]:
    """A Mosquitto whose only listener is TLS with client certificates required (mutual TLS); `.tls` has the files."""
    options = (
        "allow_anonymous true\n"
        f"cafile {tls_files.ca}\ncertfile {tls_files.server_cert}\nkeyfile {tls_files.server_key}\n"
        "require_certificate true\n"
    )
    b = Broker(tmp_path / "tls-broker", options, scheme="mqtts")
    b.tls = tls_files
    b.start()
    yield b
    b.stop()


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto that refuses anonymous clients; `.username` / `.password` are the one valid account."""
    _require(MOSQUITTO_PASSWD, "mosquitto-clients")
    workdir = tmp_path / "password-broker"
    workdir.mkdir()
    passwd = workdir / "passwd"
    username, password = "inspectd", "s3cret-pass"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(passwd), username, password], check=True, capture_output=True)
    b = Broker(workdir, f"allow_anonymous false\npassword_file {passwd}\n")
    b.username = username
    b.password = password
    b.start()
    yield b
    b.stop()


@pytest.fixture
def unix_broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto that also listens on a unix socket, `.socket_path` (no port to race for; paho transport "unix")."""
    workdir = tmp_path / "unix-broker"
    socket_path = workdir / "mqtt.sock"
    b = Broker(workdir, f"allow_anonymous true\nlistener 0 {socket_path}\nallow_anonymous true\n")
    b.socket_path = socket_path
    b.start()
    yield b
    b.stop()


@dataclass
class Collector:
    """A subscriber that records every message on `topic_filter`: `.messages` holds (topic, payload, properties)."""

    topic_filter: str
    messages: list[tuple[str, bytes, Any]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _add(self, topic: str, payload: bytes, properties: Any) -> None:
        with self._cond:
            self.messages.append((topic, payload, properties))
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least `n` messages arrived; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= n, timeout=timeout)

    def wait_until(self, predicate: Callable[[list[tuple[str, bytes, Any]]], bool], timeout: float = 10.0) -> bool:
        """Wait until `predicate(messages)` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout=timeout)

    def json(self) -> list[Any]:
        """Every payload decoded as JSON, in arrival order."""
        with self._cond:
            return [json.loads(payload) for _, payload, _ in self.messages]

    def payloads(self) -> list[bytes]:
        """Every payload, in arrival order."""
        with self._cond:
            return [payload for _, payload, _ in self.messages]


@pytest.fixture
def mqtt_collector(broker: Broker) -> Iterator[Callable[..., Collector]]:
    """Factory: `collect(topic_filter, v5=False)` subscribes (QoS 1) and returns once the broker acknowledged it.

    By default the collector is an MQTT 3.1.1 client with a persistent session (fixed client id, clean_session false):
    the broker keeps its subscription and queues QoS 1 messages for it across `broker.stop()` / `broker.start()`, so
    outage tests see every message replayed after the restart however the clients' reconnects race. Its messages
    carry no properties (None). `v5=True` gives an MQTT 5 client, whose messages carry their properties (content
    type, user properties), but mosquitto 2.0.11 does not restore MQTT 5 sessions from its persistence file: use it
    for tests without a broker restart.
    """
    import paho.mqtt.client as mqtt

    from edge.mqtt.connection import stop_loop

    clients: list[mqtt.Client] = []

    def collect(topic_filter: str, timeout: float = 10.0, *, v5: bool = False) -> Collector:
        collector = Collector(topic_filter)
        subscribed = threading.Event()
        client_id = f"collector-{uuid.uuid4().hex[:12]}"
        if v5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
            )

        def on_connect(c: mqtt.Client, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
            if not reason.is_failure and not flags.session_present:
                c.subscribe(topic_filter, qos=1)
            elif not reason.is_failure:
                subscribed.set()

        def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _reasons: Any, _props: Any) -> None:
            subscribed.set()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            collector._add(msg.topic, bytes(msg.payload), msg.properties if v5 else None)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        client.connect(broker.host, broker.port, keepalive=10)
        client.loop_start()
        clients.append(client)
        if not subscribed.wait(timeout):
            msg = f"collector for {topic_filter!r} was not subscribed within {timeout} s; broker log:\n{broker.log()}"
            raise RuntimeError(msg)
        return collector

    yield collect
    for client in clients:
        client.disconnect()
        stop_loop(client)


@pytest.fixture
def fake_gige(tmp_path: Path) -> Iterator[Any]:
    """Aravis' simulated GigE Vision camera on loopback (tests/cameras.py), running; killed by PID after the test."""
    from tests.cameras import FakeGigECamera

    camera = FakeGigECamera(tmp_path)
    camera.start()
    yield camera
    camera.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Factory: `small_disk(kib)` mounts a tmpfs of that size (root only) and returns its folder, else skips."""
    mounts: list[Path] = []

    def make(kib: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a small tmpfs needs root (mount -t tmpfs)")
        where = tmp_path / f"disk-{len(mounts)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield make
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill_disk(folder: Path) -> int:
    """Write a ballast file into `folder` until the file system is full; returns the bytes written."""
    written = 0
    with (folder / "ballast").open("wb", buffering=0) as fh:
        chunk = b"\0" * 4096
        while True:
            try:
                written += fh.write(chunk) or 0
            except OSError:
                break
    return written
