"""Progress of long loops (``quantize_`` over a big model), reported through logging.

Nothing is reported for loops that finish within ``after_s`` seconds; after that, one INFO
line at most every ``every_s`` seconds with the count, the elapsed time and an estimate of
the time left. Logging rather than a terminal bar: it works in notebooks, services and CI
logs alike, and needs no dependency (enable it with ``logging.basicConfig(level="INFO")``).
"""

from __future__ import annotations

import logging
import time

__all__ = ["Progress"]

log = logging.getLogger("lowbit")


class Progress:
    """``p = Progress("quantize_", total); p.step(name)`` once per item."""

    def __init__(self, what: str, total: int, *, after_s: float = 3.0, every_s: float = 5.0, unit: str = "layers"):
        self.what, self.total, self.unit = what, total, unit
        self.after_s, self.every_s = after_s, every_s
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = None

    def step(self, name: str = "") -> None:
        self.done += 1
        now = time.perf_counter()
        elapsed = now - self.t0
        if elapsed < self.after_s or (self._last is not None and now - self._last < self.every_s):
            return
        self._last = now
        left = elapsed / self.done * (self.total - self.done)
        log.info("lowbit: %s %d/%d %s (%.0f s, ~%.0f s left)%s", self.what, self.done, self.total, self.unit,
                 elapsed, left, f"; last: {name}" if name else "")
