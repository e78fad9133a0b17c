"""A throwaway Mosquitto on a free loopback port, for `inspectd demo` and `inspectd bench` (never the daemon).

Anonymous and loopback-only on purpose: it lives as long as one command and carries sample data.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge.errors import BrokerError

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    """The mosquitto executable (PATH, or Debian's /usr/sbin which is not on a normal user's PATH), or None."""
    return next((b for b in (shutil.which(c) or c for c in MOSQUITTO_CANDIDATES) if os.access(b, os.X_OK)), None)


@contextmanager
def run_mosquitto(log_path: Path | None = None, start_timeout_s: float = 10.0) -> Iterator[int]:
    """Start Mosquitto on a free 127.0.0.1 port (anonymous, no persistence) and yield the port; stop it after.

    Raises:
        BrokerError: mosquitto is not installed, exits at start, or does not listen within `start_timeout_s`.
    """
    binary = mosquitto_binary()
    if binary is None:
        msg = "Mosquitto is not installed: apt-get install mosquitto"
        raise BrokerError(msg)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="inspectd-mosquitto-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            # run as ourselves: as root, mosquitto would switch to its own user and lose access to our files
            f"user {pwd.getpwuid(os.getuid()).pw_name}\nmax_queued_messages 100000\n",
            encoding="utf-8",
        )
        log = log_path.open("wb") if log_path is not None else subprocess.DEVNULL
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout_s
            while not reachable("127.0.0.1", port, timeout=0.2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    where = f"; see {log_path}" if log_path is not None else ""
                    msg = f"Mosquitto did not start on 127.0.0.1:{port} (exit code {proc.poll()}){where}"
                    raise BrokerError(msg)
                time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if log_path is not None:
                log.close()  # type: ignore[union-attr]
