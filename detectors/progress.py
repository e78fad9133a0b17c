"""Progress of long offline jobs: a tqdm bar on a terminal, a structured log line every few seconds elsewhere.

tqdm redraws by writing a line per refresh when stderr is not a terminal, so an 8-minute run under systemd or
`tee` left about a megabyte of bars in its log. Off a terminal the bar is disabled and `Progress` logs one
`progress` event (task, done, total, rate, ETA and the latest figures such as loss) at most every `interval` s.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from edge.log import get_logger

log = get_logger(__name__)

INTERVAL_S = 5.0


class Progress:
    """Count work done toward `total`; show it as a bar (terminal) or as rate-limited log lines (anything else)."""

    def __init__(
        self, total: int | None, desc: str, *, enabled: bool = True, unit: str = "step", interval: float = INTERVAL_S
    ) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.enabled = enabled
        self.done = 0
        self.fields: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, **fields: Any) -> None:
        """Add `n` units done; `fields` (e.g. loss=0.12) are shown beside the count."""
        self.done += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if fields:
                self._bar.set_postfix({k: _fmt(v) for k, v in self.fields.items()}, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now)

    def close(self) -> None:
        """Finish the bar, or log the final line."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            self._log(time.monotonic(), finished=True)
        self.enabled = False

    def _log(self, now: float, finished: bool = False) -> None:
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if self.total and rate > 0 and not finished else None
        log.info(
            "progress",
            task=self.desc,
            done=self.done,
            total=self.total,
            unit=self.unit,
            elapsed_s=round(elapsed, 1),
            rate=round(rate, 3),
            eta_s=None if eta is None else round(eta, 1),
            finished=finished,
            **{k: _fmt(v) for k, v in self.fields.items()},
        )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value
