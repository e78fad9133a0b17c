import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config, load_config
from edge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


class TestLoadConfig:
    def test_default_file_is_valid_and_complete(self):
        """config.toml at the root validates and documents every key of every section (secrets excepted)."""
        load_config(ROOT / "config.toml")
        text = (ROOT / "config.toml").read_text()
        for section, field in Config.model_fields.items():
            assert f"[{section}]" in text
            for key in type(field.default_factory()).model_fields:
                if key not in {"password", "tls_key_password"}:
                    assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key} undocumented"

    @pytest.mark.parametrize(
        ("toml", "message"),
        [
            ("[mqtt]\nport = 70000", "mqtt.port: must be 1..65535, got 70000"),  # out of range
            ("[mqtt]\nprot = 1883", "mqtt.prot: unknown key"),  # typo
            ("[wat]\nx = 1", "wat: unknown key"),  # unknown section
            ('[source]\nkind = "usb"', "source.kind: must be one of"),  # not in the enum
            ('[mqtt]\npassword = "hunter2"', "must not be in the config file"),  # secret in TOML
            ("[mqtt]\nport = ", "not valid TOML"),  # syntax error
            ("[model]\nslots = 7", "model.slots: must be 2..3, got 7"),
        ],
    )
    def test_refused_with_key_path(self, tmp_path, toml, message):
        """Bad values and unknown keys are refused with a message naming the key path."""
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
            load_config(write(tmp_path, toml))

    def test_env_overrides_toml(self, tmp_path, monkeypatch):
        """INSPECTD_SECTION__KEY wins over the file, other keys of the section stay."""
        monkeypatch.setenv("INSPECTD_MQTT__HOST", "broker.local")
        monkeypatch.setenv("INSPECTD_MODEL__BUNDLE", "/opt/b")
        config = load_config(write(tmp_path, '[mqtt]\nhost = "x"\nport = 1884'))
        assert (config.mqtt.host, config.mqtt.port, str(config.model.bundle)) == ("broker.local", 1884, "/opt/b")

    def test_secrets_from_env_and_credentials(self, tmp_path, monkeypatch):
        """The password comes from $CREDENTIALS_DIRECTORY, env wins, and neither shows in the printed config."""
        (tmp_path / "mqtt_password").write_text("s3cret\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        config = load_config(write(tmp_path, '[mqtt]\nusername = "line"'))
        assert config.mqtt.password.get_secret_value() == "s3cret"
        monkeypatch.setenv("INSPECTD_MQTT__PASSWORD", "fromenv")
        assert load_config(write(tmp_path, '[mqtt]\nusername = "line"')).mqtt.password.get_secret_value() == "fromenv"

    def test_password_needs_username(self, tmp_path, monkeypatch):
        """A password without a user name is a config error naming both keys."""
        monkeypatch.setenv("INSPECTD_MQTT__PASSWORD", "x")
        with pytest.raises(ConfigError, match="mqtt.password is set but mqtt.username is not"):
            load_config(write(tmp_path, ""))

    def test_relative_paths_against_the_files_folder(self, tmp_path, monkeypatch):
        """Relative paths are taken relative to the config file's folder, wherever the caller runs from."""
        folder = tmp_path / "etc"
        folder.mkdir()
        elsewhere = tmp_path / "cwd"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        path = write(folder, '[model]\nbundle = "b"\n[mqtt]\nspool_dir = "../spool"\n[debug]\ncurve_secret_key = "k"')
        config = load_config(path)
        assert config.model.bundle == folder / "b"
        assert config.mqtt.spool_dir == folder / "../spool"
        assert config.debug.curve_secret_key == folder / "k"
        assert load_config("../etc/c.toml").model.bundle == folder / "b"  # a relative file name too
        assert load_config(path, base_dir=tmp_path).model.bundle == tmp_path / "b"  # an explicit base wins
        monkeypatch.setenv("INSPECTD_MODEL__BUNDLE", "envb")
        assert load_config(None).model.bundle == elsewhere / "envb"  # no file: the current directory


class TestConfigCheckCommand:
    def run(self, *args, env=None):
        return subprocess.run([sys.executable, "-m", "edge", "config", "check", *map(str, args)],
                              capture_output=True, text=True, env=env, check=False)

    def test_prints_effective_config_masked(self, tmp_path):
        """`inspectd config check` prints every section and masks the password."""
        import os

        env = dict(os.environ, INSPECTD_MQTT__PASSWORD="hunter2", INSPECTD_MQTT__USERNAME="u")
        result = self.run(ROOT / "config.toml", env=env)
        assert result.returncode == 0, result.stderr
        assert "[mqtt]" in result.stdout and 'password = "***"' in result.stdout
        assert "hunter2" not in result.stdout + result.stderr

    def test_bad_port_exit_2(self, tmp_path):
        """mqtt.port = 70000 exits 2 with a message naming mqtt.port."""
        result = self.run(write(tmp_path, "[mqtt]\nport = 70000"))
        assert result.returncode == 2
        assert "mqtt.port: must be 1..65535, got 70000" in result.stderr
