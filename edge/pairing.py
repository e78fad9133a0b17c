"""Hardware trigger: pair the part ids of trigger messages with the exposures the camera reports, in order.

With `source.trigger = "hardware"` the PLC pulses the camera's trigger line and, with `pipeline.mode =
"triggered"`, also publishes the part id on `<prefix>/trigger`. The two arrive independently, so they are paired by
this rule (also in the README, Triggering):

1. Exposures and part ids each wait in their own queue, in arrival order (host monotonic clock).
2. The oldest exposure and the oldest part id are a pair when they arrived within `window` seconds of each other
   (`pipeline.trigger_timeout_s`), whichever came first.
3. When they are further apart, the older of the two can never be paired (everything behind it in the other queue
   is newer still): it is reported unpaired, and rule 2 is tried again with the next one.
4. Anything that has waited longer than `window` with nothing to pair it with is reported unpaired.

Unpaired part ids and unpaired exposures each get an `error` verdict; an exposure the camera lost on the way is an
error frame in its place (edge/sources/genicam.py), so it still takes exactly one part id and the rest stay in step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge.sources import Frame

P = TypeVar("P")  # what stands for a part: its trigger in the pipeline, a part id in tests


@dataclass(frozen=True)
class Pair(Generic[P]):
    """What one verdict is made of: an exposure, a part, or both; `error` when it is not a pair."""

    frame: Frame | None
    part_id: P | None
    error: str | None = None


class Pairer(Generic[P]):
    """The queues and the rule above; the pipeline's capture stage feeds it and asks what is due."""

    def __init__(self, window: float, camera: str) -> None:
        self.window = window
        self.camera = camera
        self._parts: deque[tuple[P | None, float]] = deque()
        self._frames: deque[Frame] = deque()

    def part(self, part_id: P | None, received: float) -> None:
        """A trigger message arrived at `received` (time.monotonic())."""
        self._parts.append((part_id, received))

    def exposure(self, frame: Frame) -> None:
        """The camera delivered an exposure (or an error frame standing for a lost one)."""
        self._frames.append(frame)

    def due(self, now: float) -> list[Pair[P]]:
        """Pairs made, and items that can no longer be paired, in the order their verdicts should go out."""
        out: list[Pair[P]] = []
        while self._parts and self._frames:
            part_id, received = self._parts[0]
            frame = self._frames[0]
            if abs(frame.mono - received) <= self.window:
                self._parts.popleft()
                self._frames.popleft()
                out.append(Pair(frame, part_id, frame.error))
            elif frame.mono < received:
                out.append(self._lone_frame())
            else:
                out.append(self._lone_part())
        while self._frames and now - self._frames[0].mono > self.window:
            out.append(self._lone_frame())
        while self._parts and now - self._parts[0][1] > self.window:
            out.append(self._lone_part())
        return out

    def drain(self, why: str) -> list[Pair[P]]:
        """Everything still waiting, unpaired (the daemon is stopping or the source ended)."""
        out: list[Pair[P]] = [Pair(f, None, f"exposure not paired with a part id: {why}") for f in self._frames]
        out += [Pair(None, p, f"trigger not served: {why}") for p, _ in self._parts]
        self._frames.clear()
        self._parts.clear()
        return out

    def _lone_frame(self) -> Pair[P]:
        frame = self._frames.popleft()
        why = frame.error or (f"exposure from camera {self.camera} with no part id within {self.window:g} s "
                              "(hardware trigger with no trigger message)")
        return Pair(frame, None, why)

    def _lone_part(self) -> Pair[P]:
        part_id, _ = self._parts.popleft()
        why = f"no exposure from camera {self.camera} within {self.window:g} s of the trigger message (hardware)"
        return Pair(None, part_id, why)
