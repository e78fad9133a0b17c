import numpy as np
import pytest

from calib.thresholds import (
    CalibrationError,
    Scored,
    choose,
    require_good,
    to_raw,
    write_thresholds,
)
from edge.bundle import Thresholds
from edge.errors import DatasetError
from tests.bundles import read_thresholds


def scored(scores, peaks=None, labels=None, masks=None):
    """Scored raw outputs whose maps peak at `peaks`."""
    scores = np.asarray(scores, np.float64)
    peaks = scores if peaks is None else np.asarray(peaks, np.float64)
    maps = np.zeros((len(scores), 2, 2))
    maps[:, 0, 0] = peaks
    labels = np.zeros(len(scores), int) if labels is None else np.asarray(labels)
    return Scored(scores, maps, labels, masks)


GOOD = scored(np.linspace(1.0, 2.0, 21))  # median 1.5, max 2.0


class TestChoose:
    """choose(): threshold rules on raw scores."""

    def test_margin_default(self):
        """Good-only default: image = median + 1.1 x (max - median), offset = median, no good image rejected."""
        t = choose(GOOD)
        assert t.offset == pytest.approx(1.5)
        assert t.image == pytest.approx(1.5 + 1.1 * 0.5)
        assert t.calibrated and t.n_good == 21 and t.n_defect == 0
        assert t.expected_false_reject_rate == 0.0 and t.expected_escape_rate is None
        assert "good-only" in t.method

    def test_quantile(self):
        """Quantile rule: the image threshold is that quantile of the good scores."""
        t = choose(GOOD, quantile=0.9)
        assert t.image == pytest.approx(np.quantile(GOOD.scores, 0.9))
        assert 0 < t.expected_false_reject_rate <= 0.15

    def test_identical_scores(self):
        """All good images scoring the same still gives an image threshold above the offset."""
        t = choose(scored([0.0] * 20))
        assert t.image > t.offset

    def test_with_defects_f1(self):
        """With defective samples the image threshold separates them (F1-optimal) and the escape rate is reported."""
        defects = scored([1.0, 5.0, 6.0, 7.0], labels=[0, 1, 1, 1])
        t = choose(GOOD, defects)
        assert 2.0 < t.image <= 5.0
        assert t.n_defect == 3 and t.n_good == 22
        assert t.expected_escape_rate == 0.0 and t.expected_false_reject_rate == 0.0
        assert "F1-optimal" in t.method

    def test_f1_threshold_below_median_moves_offset(self):
        """A low F1 threshold still leaves the offset below the image threshold (no division by zero)."""
        defects = scored([1.2, 1.3, 1.4, 1.45], labels=[1, 1, 1, 1])
        t = choose(GOOD, defects)
        assert t.image > t.offset

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"margin": 0.9}, "margin"),  # below 1 would reject good parts by design
            ({"quantile": 0.2}, "quantile"),  # nonsense quantile
            ({"margin": 1.1, "quantile": 0.99}, "not both"),
        ],
    )
    def test_bad_rules_refused(self, kwargs, match):
        """Out-of-range rules are refused with the flag named."""
        with pytest.raises(CalibrationError, match=match):
            choose(GOOD, **kwargs)


class TestRequireGood:
    """require_good(): the minimum number of good images."""

    def test_too_few(self):
        """Fewer than the minimum is refused, saying how many are needed and found."""
        with pytest.raises(DatasetError, match="at least 20 good images, found 7"):
            require_good(7, "some/dir")

    @pytest.mark.parametrize(("found", "minimum", "short"), [(19, 20, 1), (4, 5, 1), (0, 20, 20)])
    def test_boundary(self, found, minimum, short):
        """The minimum itself is accepted, one fewer is refused, and the message says how many more to add."""
        assert require_good(minimum, "some/dir", minimum) is None
        assert require_good(minimum + 50, "some/dir", minimum) is None
        with pytest.raises(DatasetError, match=f"at least {minimum} good images, found {found} in some/dir; add {short} more"):
            require_good(found, "some/dir", minimum)


class TestToRaw:
    """to_raw(): undoing the graph's normalisation."""

    def test_inverse_of_normalisation(self):
        """to_raw undoes (raw - offset) / (image - offset)."""
        t = Thresholds(image=3.0, pixel=2.0, offset=1.0, method="x")
        raw = np.array([0.0, 1.0, 2.5])
        assert np.allclose(to_raw((raw - 1.0) / 2.0, t), raw)


class TestWriteThresholds:
    """write_thresholds(): editing the initializers of an exported graph."""

    def test_round_trip(self, tmp_path):
        """Thresholds written into an exported graph read back unchanged."""
        from export.build import export_bundle
        from tests.export.tinydet import TinyDetector, tiny_meta

        bundle, _ = export_bundle(TinyDetector(), tiny_meta(), tmp_path / "b")
        t = Thresholds(image=0.7, pixel=0.6, offset=0.1, method="test")
        write_thresholds(bundle.onnx_path, t)
        assert read_thresholds(bundle.onnx_path) == pytest.approx({"offset": 0.1, "image": 0.7, "pixel": 0.6})

    def test_foreign_graph_refused(self, tmp_path):
        """A graph without the named initializers (not made by inspectd export) is refused."""
        import onnx
        from onnx import TensorProto, helper

        image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 4, 4, 3])
        score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4, 4, 3])
        cast = helper.make_node("Cast", ["image"], ["score"], to=TensorProto.FLOAT)
        path = tmp_path / "foreign.onnx"
        onnx.save(helper.make_model(helper.make_graph([cast], "foreign", [image], [score])), path)
        with pytest.raises(CalibrationError, match="inspectd export"):
            write_thresholds(path, Thresholds(image=1.0, pixel=1.0, method="x"))
