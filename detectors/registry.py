"""The typed detector registry: one lookup, one params check, one seeding, for every command that uses a detector.

Each detector package (`detectors/<name>/__init__.py`) declares `DETECTOR = Detector(...)`: its name, a pydantic
params model (`extra="forbid"`, each field with a default, a range and a one-line description), `build(params,
input_size) -> nn.Module` and `fit(model, images, params, ctx) -> log`. Its module's forward takes float32 RGB NCHW
in [0, 1] and returns a `DetectorOutput(score (B,), anomaly_map (B, 1, H, W))`, raw (higher = more anomalous), at
input size, and exports to ONNX with a dynamic batch. `detectors.DETECTORS` (torch-free) maps names to packages.

Adding a detector:
    class Params(DetectorParams):
        k: int = Field(3, ge=1, description="neighbours averaged")
    DETECTOR = Detector("mydet", "one line", Params, build, fit, tiny={"k": 1})
    # and "mydet": "detectors.mydet" in detectors.DETECTORS
"""

from __future__ import annotations

import importlib
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from detectors import DETECTORS
from edge.errors import InspectdError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn


class DetectorOutput(NamedTuple):
    """What every detector's forward returns: raw image score (B,) and anomaly map (B, 1, H, W)."""

    score: torch.Tensor
    anomaly_map: torch.Tensor


class DetectorParams(BaseModel):
    """Base of every detector's params model: unknown keys are errors, values are checked, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DetectorError(InspectdError):
    """Raised for an unknown detector or a bad parameter; the message lists what is valid."""

    exit_code = 2


@dataclass(frozen=True)
class FitContext:
    """What `fit` gets besides the model, images and params. `rng` is the one generator seeded by `train`."""

    rng: np.random.Generator
    device: torch.device
    max_minutes: float | None = None
    progress: bool = True


P = TypeVar("P", bound=DetectorParams)


@dataclass(frozen=True)
class Detector(Generic[P]):
    """A registered detector.

    Args:
        name: the name commands and checkpoints use.
        summary: one line for listings.
        params: its pydantic params model.
        build: `(params, (h, w)) -> nn.Module`, untrained (pretrained weights load in `fit`).
        fit: `(model, images uint8 BGR (N, H, W, 3), params, ctx) -> {"loss": [...], "steps": n, "minutes": m}`.
        tiny: params for a tiny, offline, quickly built instance (tests and graph checks enumerate detectors by it).
        pretrained: uses pretrained (ImageNet) weights, reported beside benchmark numbers.
    """

    name: str
    summary: str
    params: type[P]
    build: Callable[[P, tuple[int, int]], nn.Module]
    fit: Callable[[nn.Module, np.ndarray, P, FitContext], dict[str, Any]]
    tiny: Mapping[str, Any] = field(default_factory=dict)
    pretrained: bool = False

    def make_params(self, values: Mapping[str, Any] | DetectorParams | None = None) -> P:
        """Validate `values` (missing keys take defaults) into this detector's params model."""
        if isinstance(values, self.params):
            return values
        if isinstance(values, DetectorParams):
            values = values.model_dump()
        values = dict(values or {})
        unknown = sorted(set(values) - set(self.params.model_fields))
        if unknown:
            msg = (
                f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for detector {self.name}; "
                f"it takes {', '.join(self.params.model_fields)} "
                f"(see `inspectd train --detector {self.name} --help-params`)"
            )
            raise DetectorError(msg)
        try:
            return self.params(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
            )
            msg = f"bad parameter for detector {self.name}: {problems}"
            raise DetectorError(msg) from None


def names() -> list[str]:
    """Registered detector names, sorted (no torch import)."""
    return sorted(DETECTORS)


def get(name: str) -> Detector:
    """The registered detector `name`; raises DetectorError listing the valid names."""
    if name not in DETECTORS:
        msg = f"unknown detector {name!r}; expected one of {', '.join(names())}"
        raise DetectorError(msg)
    detector = importlib.import_module(DETECTORS[name]).DETECTOR
    if not isinstance(detector, Detector) or detector.name != name:
        msg = f"{DETECTORS[name]}.DETECTOR does not declare detector {name!r}"
        raise DetectorError(msg)
    return detector


def all_detectors() -> list[Detector]:
    """Every registered detector (imports their packages, so torch)."""
    return [get(name) for name in names()]


def parse_assignments(detector: Detector, items: Iterable[str]) -> dict[str, Any]:
    """`key=value` strings (from `--param`) -> a dict checked against the detector's params model.

    Values of str fields stay strings (paths, names); others are read as JSON when they parse (numbers,
    booleans, null), else kept as strings for pydantic to judge.
    """
    out: dict[str, Any] = {}
    fields = detector.params.model_fields
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            msg = f"--param {item!r}: expected key=value (`inspectd train --detector {detector.name} --help-params`)"
            raise DetectorError(msg)
        if key in fields and fields[key].annotation is str:
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    detector.make_params(out)  # reports unknown keys and bad values now, naming them
    return out


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _range(info: Any) -> str:
    bounds = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{sign} {value}")
    return ", ".join(bounds)


def describe_params(detector: Detector) -> str:
    """A table of the detector's params: name, type, default, range and description (`--help-params`)."""
    rows = []
    for key, info in detector.params.model_fields.items():
        rows.append((key, _type_name(info.annotation), repr(info.default), _range(info), info.description or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{detector.name}: {detector.summary}", "params (--param KEY=VALUE):"]
    for row in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return "\n".join(lines)


def train(
    name: str,
    images: np.ndarray,
    params: Mapping[str, Any] | DetectorParams | None,
    input_size: tuple[int, int],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_minutes: float | None = None,
    progress: bool = True,
) -> tuple[nn.Module, DetectorParams, dict[str, Any]]:
    """Seed every RNG once, build and fit `name` on good images; returns (model in eval mode, params, log)."""
    import torch

    from detectors.training import seed_everything

    detector = get(name)
    checked = detector.make_params(params)
    rng = seed_everything(seed)
    model = detector.build(checked, (int(input_size[0]), int(input_size[1])))
    ctx = FitContext(rng=rng, device=torch.device(device), max_minutes=max_minutes, progress=progress)
    log = detector.fit(model, images, checked, ctx)
    return model.eval(), checked, log


def build(name: str, params: Mapping[str, Any] | DetectorParams | None, input_size: tuple[int, int]) -> nn.Module:
    """An untrained module of detector `name` (what loading a checkpoint starts from)."""
    detector = get(name)
    return detector.build(detector.make_params(params), (int(input_size[0]), int(input_size[1])))
