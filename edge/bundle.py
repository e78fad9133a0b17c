"""Model bundle: a folder with `model.onnx` (plus optional INT8 flavours and a TensorRT engine) and `bundle.json`.

The bundle is the contract between the offline side (export, calibrate) and the daemon: the daemon runs any bundle
without knowing which detector made it. Every file is listed with its SHA-256 in `bundle.json`, and `load_bundle`
refuses a bundle whose files do not match, whose schema version is unknown, or whose input is not the uint8 NHWC
image the daemon feeds.

The graph contract itself (input `image` uint8 NHWC in `input.color_order`; `score`, `anomaly_map`, `mask` out,
normalised so the image threshold is 1.0) is edge/contract.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge import __version__
from edge.contract import CHANNELS, INPUT_DTYPE, INPUT_LAYOUT, INPUT_NAME, OUTPUT_NAMES, InputDtype, InputLayout
from edge.errors import BundleError

SCHEMA_VERSION = 1
BUNDLE_JSON = "bundle.json"
EVIDENCE_PNG = "calibration.png"  # drawn by `inspectd calibrate`; removed by a new export (it shows the old model)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """The one input the daemon feeds: uint8 NHWC images of a fixed size in the declared colour order."""

    name: str = INPUT_NAME
    dtype: InputDtype = INPUT_DTYPE
    layout: InputLayout = INPUT_LAYOUT
    height: int = Field(gt=0, le=8192)
    width: int = Field(gt=0, le=8192)
    channels: Literal[3] = CHANNELS
    color_order: Literal["BGR", "RGB"] = "BGR"


class Thresholds(_Strict):
    """Raw-score thresholds baked into the graph. normalised = (raw - offset) / (image - offset)."""

    image: float = Field(description="Raw image-score threshold; maps to 1.0 in the outputs.")
    pixel: float = Field(description="Raw pixel threshold for the mask.")
    offset: float = Field(0.0, description="Raw value that maps to 0.0 (typical score of a good image).")
    method: str = Field(description="How they were set, e.g. 'provisional: training images' or 'good-only: max x 1.1'.")
    calibrated: bool = False
    n_good: int = 0
    n_defect: int = 0
    expected_false_reject_rate: float | None = Field(None, description="In-sample: on the images the rule saw.")
    expected_escape_rate: float | None = None
    cv_folds: int | None = Field(None, description="k of the stratified k-fold estimate below; None = not run.")
    cv_false_reject_rate: float | None = Field(
        None, description="Out of sample: each image judged by a fold threshold chosen without it."
    )
    cv_escape_rate: float | None = None


class TrainingSummary(_Strict):
    """Which good images the model learned from, so a bundle can be traced back to its data."""

    category: str = ""
    images: int = 0
    hash: str = Field("", description="SHA-256 over the sorted training file names and bytes.")


class Fp32Part(_Strict):
    """A part of the graph an INT8 flavour leaves FP32, and why."""

    nodes: str = Field(description="a learned block (the node-name prefix of its sub-module) or one node's name")
    reason: str


class Int8Flavour(_Strict):
    """An INT8 Q/DQ model in the bundle, for one runtime, with the accuracy and speed it was admitted on."""

    file: str
    target: Literal["cpu", "tensorrt"]
    quant: str = Field(description="e.g. 'QDQ S8S8 symmetric per-channel' or 'QDQ U8S8 per-channel'.")
    image_auroc_delta: float | None = None
    pixel_auroc_delta: float | None = None
    fp32_ms: float | None = None
    int8_ms: float | None = None
    faster: bool | None = Field(None, description="INT8 measured faster than FP32 at calibration time.")
    measured_on: str | None = Field(None, description="CPU model and ISA flags fp32_ms/int8_ms were measured on.")
    calibration: str | None = Field(None, description="Calibration method and images.")
    fp32: list[Fp32Part] = Field(default_factory=list, description="What stayed FP32, and why.")


class EngineInfo(_Strict):
    """A TensorRT engine: tied to the TensorRT version and GPU it was built with, so both are recorded."""

    file: str
    precision: Literal["fp16", "int8", "fp32"]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1


class BundleMeta(_Strict):
    """Everything in bundle.json."""

    schema_version: int
    name: str
    inspectd_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    detector: str
    detector_params: dict[str, Any] = Field(default_factory=dict)
    input: InputSpec
    outputs: list[str] = Field(default_factory=lambda: list(OUTPUT_NAMES))
    opset: int
    thresholds: Thresholds
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    metrics: dict[str, float] = Field(default_factory=dict)
    int8: list[Int8Flavour] = Field(default_factory=list)
    engine: EngineInfo | None = None
    files: dict[str, str] = Field(default_factory=dict, description="file name -> SHA-256 hex")


class Bundle(BaseModel):
    """A loaded, verified bundle: its folder and metadata."""

    model_config = ConfigDict(frozen=True)

    path: Path
    meta: BundleMeta

    @property
    def onnx_path(self) -> Path:
        """The FP32 graph every backend can run."""
        return self.path / "model.onnx"

    @property
    def short_hash(self) -> str:
        """First 12 hex digits of model.onnx's SHA-256, as carried in every verdict."""
        return self.meta.files.get("model.onnx", "")[:12]

    def file(self, name: str) -> Path:
        """Path of a file in the bundle folder."""
        return self.path / name


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file, read in chunks (engines can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_inside(bundle: Path, name: str) -> None:
    """Refuse a file name in bundle.json that leaves the bundle folder (absolute, `..`, or a link pointing out).

    Checked before anything is opened or hashed, so a bad name can neither load nor fingerprint an outside file.
    """
    candidate = Path(name)
    inside = not candidate.is_absolute() and ".." not in candidate.parts and name.strip() != ""
    if inside:
        root = bundle.resolve()
        inside = (root / candidate).resolve().is_relative_to(root)
    if not inside:
        msg = (f"bundle {bundle}: {BUNDLE_JSON} names {name!r}, a path outside the bundle folder; every file of a "
               "bundle must be inside it (re-export the bundle)")
        raise BundleError(msg)


def load_bundle(path: Path | str, *, verify: bool = True) -> Bundle:
    """Load and verify a bundle folder.

    Raises:
        BundleError: the folder or bundle.json is missing or malformed, the schema version is not ours, the input
            spec is not uint8 NHWC with 3 channels, a listed file is missing, or a file's hash differs.
    """
    path = Path(path)
    meta_file = path / BUNDLE_JSON
    if not meta_file.is_file():
        msg = f"bundle {path}: {BUNDLE_JSON} not found (is this a bundle folder made by `inspectd export`?)"
        raise BundleError(msg)
    try:
        raw = json.loads(meta_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        msg = f"bundle {path}: {BUNDLE_JSON} is not UTF-8 text (byte {exc.start}): a damaged copy? re-copy the bundle"
        raise BundleError(msg) from None
    except json.JSONDecodeError as exc:
        msg = f"bundle {path}: {BUNDLE_JSON} is not valid JSON: {exc}"
        raise BundleError(msg) from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        msg = f"bundle {path}: schema_version {version!r} not supported, expected {SCHEMA_VERSION}; re-export it"
        raise BundleError(msg)
    try:
        meta = BundleMeta.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        msg = f"bundle {path}: {BUNDLE_JSON} does not match the bundle schema: {problems}"
        raise BundleError(msg) from None
    if "model.onnx" not in meta.files:
        msg = f"bundle {path}: model.onnx is not listed in {BUNDLE_JSON}"
        raise BundleError(msg)
    named = [*meta.files, *(f.file for f in meta.int8), *([meta.engine.file] if meta.engine else [])]
    for name in named:
        _check_inside(path, name)
    if verify:
        for name, expected in meta.files.items():
            file = path / name
            if not file.is_file():
                msg = f"bundle {path}: {name} is listed in {BUNDLE_JSON} but missing"
                raise BundleError(msg)
            actual = sha256_file(file)
            if actual != expected:
                msg = (
                    f"bundle {path}: {name} has SHA-256 {actual[:12]}…, {BUNDLE_JSON} says {expected[:12]}…; "
                    "the file was changed or corrupted after export — re-export or re-copy the bundle"
                )
                raise BundleError(msg)
    return Bundle(path=path, meta=meta)


def write_bundle(path: Path | str, meta: BundleMeta) -> Bundle:
    """Hash every file `meta.files` names plus any model*/engine file present, and write bundle.json atomically."""
    path = Path(path)
    names = set(meta.files) | {p.name for p in path.iterdir() if p.is_file() and p.name != BUNDLE_JSON}
    files = {name: sha256_file(path / name) for name in sorted(names) if (path / name).is_file()}
    meta = meta.model_copy(update={"files": files})
    text = json.dumps(meta.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".bundle-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path / BUNDLE_JSON)
    return Bundle(path=path, meta=meta)
