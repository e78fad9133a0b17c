"""Start-up faults: every operator error is one clear line and exit code 2, and nothing is announced before it.

Issue #15 items 7 (start-up errors that were tracebacks), 8 (bundle paths that leave the bundle, the hash of the
model that actually runs) and 10 (metrics bound off loopback, camera passwords), plus the held scenarios: bad
configs and bundles exit 2 with one line, a password in the TOML and a public debug bind without CURVE are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest

from edge.bundle import Bundle, Int8Flavour, load_bundle, write_bundle
from edge.config import load_config
from edge.daemon import run_daemon
from tests.conftest import Broker
from tests.edge.test_daemon import PREFIX, ROOT, daemon_cmd, write_config, write_frames

pytestmark = pytest.mark.timeout(60)


def start(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `inspectd run` to completion (start-up errors end it at once)."""
    return subprocess.run(daemon_cmd(config, *args), cwd=ROOT, capture_output=True, text=True, timeout=45,
                          env={**os.environ, **(env or {})}, check=False)


def one_line_exit_2(done: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert exit code 2 and one error message, no traceback, containing every needle; return the message.

    The message is one line, or for an invalid config one line per problem under an "invalid config:" head.
    """
    text = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert text and text[0].startswith("inspectd ") and all(line.startswith("  ") for line in text[1:]), text
    message = "\n".join(text)
    for needle in needles:
        assert needle in message, message
    return message


def copy_bundle(bundle: Bundle, where: Path) -> Path:
    """A private copy of the tiny bundle to tamper with."""
    shutil.copytree(bundle.path, where)
    return where


@pytest.fixture
def frames(tmp_path: Path) -> Path:
    """Three frames."""
    folder = tmp_path / "frames"
    write_frames(folder, 3)
    return folder


class TestStartupErrorsAreOneLine:
    """Item 7: errors that used to end in a traceback and exit 1."""

    def test_bundle_json_not_utf8(self, bundle: Bundle, broker: Broker, frames: Path, tmp_path: Path) -> None:
        """A bundle.json that is not UTF-8 (a copy gone wrong) names the file."""
        bad = copy_bundle(bundle, tmp_path / "bad-bundle")
        (bad / "bundle.json").write_bytes(b"\xff\xfe" + (bad / "bundle.json").read_bytes())
        done = start(write_config(tmp_path, broker, Bundle(path=bad, meta=bundle.meta), frames))
        one_line_exit_2(done, "bundle.json")

    def test_spool_dir_is_a_file(self, bundle: Bundle, broker: Broker, frames: Path, tmp_path: Path) -> None:
        """mqtt.spool_dir pointing at a file names the key."""
        (tmp_path / "spool").write_text("not a folder")
        done = start(write_config(tmp_path, broker, bundle, frames))
        one_line_exit_2(done, "mqtt.spool_dir")

    @pytest.mark.parametrize("name", ["seg-00000000000000000000.log", "spool.db"])
    def test_spool_file_is_a_folder(self, bundle: Bundle, broker: Broker, frames: Path, tmp_path: Path,
                                    name: str) -> None:
        """A folder where the spool keeps a file names the spool folder."""
        (tmp_path / "spool" / name).mkdir(parents=True)
        done = start(write_config(tmp_path, broker, bundle, frames))
        one_line_exit_2(done, "mqtt.spool_dir")

    def test_metrics_port_in_use_before_online(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                               frames: Path, tmp_path: Path) -> None:
        """A metrics port another process holds is refused before the daemon tells the line it is online."""
        status = mqtt_collector(f"{PREFIX}/status")
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            config = write_config(tmp_path, broker, bundle, frames, metrics={"enabled": True, "port": port})
            done = start(config)
        one_line_exit_2(done, "metrics", str(port))
        assert not status.wait_for(1, 1.0), status.payloads()  # never announced "online"


class TestBundlePaths:
    """Item 8: a bundle's file names never leave its folder; the verdict names the model that runs."""

    def test_int8_entry_outside_the_bundle(self, bundle: Bundle, broker: Broker, frames: Path,
                                           tmp_path: Path) -> None:
        """An INT8 flavour `../evil.onnx` (listed with its true hash) is refused, not loaded."""
        bad = copy_bundle(bundle, tmp_path / "b" / "bundle")
        evil = tmp_path / "b" / "evil.onnx"
        shutil.copy(bad / "model.onnx", evil)
        meta = json.loads((bad / "bundle.json").read_text())
        meta["int8"] = [{"file": "../evil.onnx", "target": "cpu", "quant": "QDQ", "faster": True}]
        meta["files"]["../evil.onnx"] = hashlib.sha256(evil.read_bytes()).hexdigest()
        (bad / "bundle.json").write_text(json.dumps(meta))
        done = start(write_config(tmp_path, broker, Bundle(path=bad, meta=bundle.meta), frames))
        one_line_exit_2(done, "../evil.onnx", "outside")

    def test_absolute_file_name_does_not_leak_a_hash(self, bundle: Bundle, broker: Broker, frames: Path,
                                                     tmp_path: Path) -> None:
        """A listed absolute path is refused without hashing (and printing the hash of) a file outside the bundle."""
        bad = copy_bundle(bundle, tmp_path / "bundle2")
        target = tmp_path / "secret.txt"
        target.write_text("not part of any bundle")
        meta = json.loads((bad / "bundle.json").read_text())
        meta["files"][str(target)] = "0" * 64
        (bad / "bundle.json").write_text(json.dumps(meta))
        done = start(write_config(tmp_path, broker, Bundle(path=bad, meta=bundle.meta), frames))
        line = one_line_exit_2(done, "outside")
        assert hashlib.sha256(target.read_bytes()).hexdigest()[:8] not in done.stderr, line

    def test_verdict_hash_names_the_int8_model_that_runs(self, bundle: Bundle, broker: Broker, mqtt_collector: Any,
                                                         frames: Path, tmp_path: Path) -> None:
        """With an INT8 flavour forced, model.hash is that file's hash, not model.onnx's."""
        flavoured = copy_bundle(bundle, tmp_path / "flavoured")
        model = onnx.load(flavoured / "model.onnx")
        onnx.helper.set_model_props(model, {"flavour": "int8-cpu"})  # other bytes, same graph
        onnx.save(model, flavoured / "model-int8-cpu.onnx")
        meta = load_bundle(flavoured, verify=False).meta.model_copy(
            update={"int8": [Int8Flavour(file="model-int8-cpu.onnx", target="cpu", quant="QDQ test", faster=True)]})
        written = write_bundle(flavoured, meta)
        results = mqtt_collector(f"{PREFIX}/result")
        path = write_config(tmp_path, broker, written, frames, model={"precision": "int8"})
        outcome = run_daemon(load_config(path, base_dir=tmp_path), base_dir=tmp_path)
        assert outcome["exit_code"] == 0
        assert results.wait_for(3, 10)
        expected = written.meta.files["model-int8-cpu.onnx"][:12]
        assert expected != written.short_hash
        assert {r["model"]["hash"] for r in results.json()} == {expected}


class TestHeldStartupRefusals:
    """Held scenarios: refused with exit 2 and one line (regression tests)."""

    def test_bad_value_and_tampered_bundle(self, bundle: Bundle, broker: Broker, frames: Path,
                                           tmp_path: Path) -> None:
        """An out-of-range port and a model file changed after export each give one line and exit 2."""
        bad = tmp_path / "bad"
        bad.mkdir()
        one_line_exit_2(start(write_config(bad, broker, bundle, frames, mqtt={"port": 70000})), "mqtt.port")
        tampered = copy_bundle(bundle, tmp_path / "tampered")
        (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes() + b"\0")
        good = tmp_path / "good"
        good.mkdir()
        done = start(write_config(good, broker, Bundle(path=tampered, meta=bundle.meta), frames))
        one_line_exit_2(done, "model.onnx", "SHA-256")

    def test_password_in_toml_and_public_debug_bind(self, bundle: Bundle, broker: Broker, frames: Path,
                                                    tmp_path: Path) -> None:
        """mqtt.password in the file, and a debug stream on 0.0.0.0 without CURVE, are refused."""
        one = tmp_path / "one"
        one.mkdir()
        done = start(write_config(one, broker, bundle, frames, mqtt={"username": "u", "password": "p"}))
        one_line_exit_2(done, "mqtt.password", "INSPECTD_MQTT__PASSWORD")
        two = tmp_path / "two"
        two.mkdir()
        done = start(write_config(two, broker, bundle, frames, debug={"enabled": True, "bind": "tcp://0.0.0.0:0"}))
        one_line_exit_2(done, "debug.curve_secret_key")


class TestExposure:
    """Item 10: a metrics endpoint off loopback is said out loud; camera passwords stay out of files and output."""

    def test_metrics_off_loopback_warns(self, bundle: Bundle, broker: Broker, frames: Path, tmp_path: Path) -> None:
        """metrics.host = 0.0.0.0 runs, with a warning naming the exposure."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = write_config(tmp_path, broker, bundle, frames, metrics={"enabled": True, "host": "0.0.0.0",
                                                                          "port": port})
        done = start(config, "--max-frames", "1")
        assert done.returncode == 0, done.stderr[-3000:]
        warnings = [json.loads(line) for line in done.stderr.splitlines() if '"metrics_not_loopback"' in line]
        assert warnings and warnings[0]["level"] == "warning"

    def test_camera_password_not_in_toml_and_masked(self, tmp_path: Path) -> None:
        """An RTSP password in the TOML is refused; one from the environment is used but never printed."""
        check = [sys.executable, "-m", "edge", "config", "check"]
        in_file = tmp_path / "in-file.toml"
        in_file.write_text('[source]\nkind = "rtsp"\nuri = "rtsp://admin:hunter2@10.0.0.5/stream"\n')
        done = subprocess.run([*check, str(in_file)], capture_output=True, text=True, check=False, cwd=ROOT)
        assert done.returncode == 2 and "INSPECTD_SOURCE__PASSWORD" in done.stderr, done.stderr
        assert "hunter2" not in done.stderr
        from_env = tmp_path / "from-env.toml"
        from_env.write_text('[source]\nkind = "rtsp"\nuri = "rtsp://10.0.0.5/stream"\nusername = "admin"\n')
        env = {**os.environ, "INSPECTD_SOURCE__PASSWORD": "hunter2"}
        done = subprocess.run([*check, str(from_env)], capture_output=True, text=True, check=False, cwd=ROOT,
                              env=env)
        assert done.returncode == 0, done.stderr
        assert "hunter2" not in done.stdout + done.stderr
        assert 'password = "***"' in done.stdout
        env = {**os.environ, "INSPECTD_SOURCE__URI": "rtsp://admin:hunter2@10.0.0.5/stream"}
        done = subprocess.run([*check, str(from_env)], capture_output=True, text=True, check=False, cwd=ROOT,
                              env=env)
        assert done.returncode == 0, done.stderr
        assert "hunter2" not in done.stdout + done.stderr
