"""Hardware-trigger pairing of part ids with exposures (edge/pairing.py): the README's rule, case by case."""

from __future__ import annotations

import numpy as np

from edge.pairing import Pair, Pairer
from edge.sources import CameraStamp, Frame

W = 0.5  # pairing window, s


def exposure(t: float, camera_id: int, error: str | None = None) -> Frame:
    image = None if error else np.zeros((2, 2, 3), np.uint8)
    return Frame(camera_id, 1e9 + t, t, "cam", image, error, camera=CameraStamp(camera_id, None))


def summary(pairs: list[Pair]) -> list[tuple[str | None, int | None, bool]]:
    """(part_id, camera frame id, is an error) per verdict."""
    return [(p.part_id, p.frame.camera.frame_id if p.frame and p.frame.camera else None, p.error is not None)
            for p in pairs]


def test_in_order_either_first() -> None:
    """Part ids and exposures pair in order, whether the message or the exposure arrives first."""
    p = Pairer(W, "cam")
    p.part("A", 10.0)
    p.exposure(exposure(10.1, 1))
    p.exposure(exposure(11.0, 2))
    p.part("B", 11.2)
    assert summary(p.due(11.3)) == [("A", 1, False), ("B", 2, False)]


def test_lone_exposure_and_lone_part() -> None:
    """An exposure nobody sent a part id for, and a part id with no exposure, each get an error of their own."""
    p = Pairer(W, "cam")
    p.exposure(exposure(1.0, 1))  # a stray pulse on the trigger line
    p.part("A", 2.0)
    p.exposure(exposure(2.1, 2))
    p.part("B", 3.0)  # the camera missed this one
    p.part("C", 4.0)
    p.exposure(exposure(4.2, 3))
    out = p.due(4.3)
    assert summary(out) == [(None, 1, True), ("A", 2, False), ("B", None, True), ("C", 3, False)]
    assert "no part id" in (out[0].error or "") and "no exposure" in (out[2].error or "")


def test_waits_for_the_window_then_gives_up() -> None:
    """A lone item waits up to the window for its partner, then is reported unpaired."""
    p = Pairer(W, "cam")
    p.part("A", 1.0)
    assert p.due(1.4) == []
    assert summary(p.due(1.6)) == [("A", None, True)]
    p.exposure(exposure(2.0, 7))
    assert p.due(2.4) == []
    assert summary(p.due(2.6)) == [(None, 7, True)]


def test_lost_exposure_keeps_the_sequence() -> None:
    """An exposure lost in transfer (an error frame in its place) takes its part id as an error; the rest stay paired."""
    p = Pairer(W, "cam")
    for i, part in enumerate("ABC"):
        p.part(part, 10.0 + i)
    p.exposure(exposure(10.05, 1))
    p.exposure(exposure(11.05, 2, error="exposure lost on the way"))
    p.exposure(exposure(12.05, 3))
    assert summary(p.due(12.1)) == [("A", 1, False), ("B", 2, True), ("C", 3, False)]


def test_drain() -> None:
    """At shutdown everything still waiting is reported, nothing is dropped."""
    p = Pairer(W, "cam")
    p.part("A", 1.0)
    p.exposure(exposure(5.0, 9))
    assert summary(p.drain("inspectd is stopping")) == [(None, 9, True), ("A", None, True)]
    assert p.drain("again") == []
