"""The typed detector registry: lookup, params models, errors that list what is valid, --help-params, seeding once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import DETECTORS, registry
from edge.cli import main


class TestLookup:
    """Every registered detector declares itself completely."""

    @pytest.mark.parametrize("name", sorted(DETECTORS))
    def test_declares_a_complete_detector(self, name):
        """Name, params model with a default, a description and a forbid-extra config for each field; tiny builds."""
        det = registry.get(name)
        assert det.name == name and det.summary
        assert det.params.model_config["extra"] == "forbid"
        for key, info in det.params.model_fields.items():
            assert not info.is_required(), f"{name}.{key} has no default"
            assert info.description, f"{name}.{key} has no description"
        model = registry.build(name, det.tiny, (64, 64)).eval()
        with torch.no_grad():
            out = model(torch.rand(2, 3, 64, 64))
        assert isinstance(out, registry.DetectorOutput)
        assert out.score.shape == (2,) and out.anomaly_map.shape == (2, 1, 64, 64)

    def test_unknown_detector_lists_the_valid_ones(self):
        """An unknown name is a DetectorError naming every registered detector."""
        with pytest.raises(registry.DetectorError, match="unknown detector 'nope'") as err:
            registry.get("nope")
        for name in DETECTORS:
            assert name in str(err.value)


class TestParams:
    """Params: defaults, ranges, unknown keys, --param strings."""

    def test_unknown_param_lists_the_valid_ones(self):
        """An unknown key names itself, every valid key and the --help-params command."""
        det = registry.get("padim")
        with pytest.raises(registry.DetectorError, match="unknown parameter dd for detector padim") as err:
            det.make_params({"dd": 3})
        assert "backbone" in str(err.value) and "--help-params" in str(err.value)

    def test_out_of_range_value_is_refused(self):
        """A value outside its declared range is refused with the key and value in the message."""
        with pytest.raises(registry.DetectorError, match=r"d=0: .*greater than or equal to 1"):
            registry.get("padim").make_params({"d": 0})

    def test_assignments_are_typed_by_the_model(self):
        """--param strings: numbers/booleans parse as JSON, str fields keep the raw text, bad forms are errors."""
        det = registry.get("padim")
        got = registry.parse_assignments(det, ["d=50", "shared=true", "weights=123", "eps=1e-3"])
        assert got == {"d": 50, "shared": True, "weights": "123", "eps": 0.001}
        with pytest.raises(registry.DetectorError, match="expected key=value"):
            registry.parse_assignments(det, ["d"])

    def test_help_params_lists_every_param(self, capsys):
        """`inspectd train --detector NAME --help-params` prints each param with type, default, range, description."""
        assert main(["train", "--detector", "padim", "--help-params"]) == 0
        out = capsys.readouterr().out
        for key in registry.get("padim").params.model_fields:
            assert f"  {key} " in out
        assert ">= 1" in out and "channels kept" in out

    def test_train_cli_reports_unknown_param(self, tmp_path, capsys):
        """`inspectd train --param foo=1` exits 2 with the valid names, before reading any data."""
        rc = main(
            ["train", "--detector", "ssim_ae", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt")]
            + ["--param", "foo=1"]
        )
        assert rc == 2
        assert "unknown parameter foo for detector ssim_ae" in capsys.readouterr().err


class TestSeeding:
    """`registry.train` seeds once, before building: same seed, same model."""

    def test_same_seed_same_weights(self):
        """Two runs with one seed give identical weights and losses; another seed differs."""
        images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
        params = {**registry.get("ssim_ae").tiny, "steps": 2, "batch_size": 2, "patch": 32}
        a, _, la = registry.train("ssim_ae", images, params, (32, 32), seed=3, progress=False)
        b, _, lb = registry.train("ssim_ae", images, params, (32, 32), seed=3, progress=False)
        c, _, _ = registry.train("ssim_ae", images, params, (32, 32), seed=4, progress=False)
        assert la["loss"] == lb["loss"]
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
