"""How often a block is said in the log: ``RepeatLimiter`` groups the repeats of one culprit
site (the first is logged, the next ones within a minute are counted into its next line) and
``LogLimiter``, a token bucket, caps all the WARNING lines of the loop watch together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class LogLimiter:
    """A token bucket for the WARNING lines: ``burst`` at once, then one per ``every_s``."""

    def __init__(self, clock: Callable[[], float], burst: int = 10, every_s: float = 6.0):
        self.clock = clock
        self.burst = burst
        self.every_s = every_s
        self.tokens = float(burst)
        self.at = clock()
        self.held_back = 0

    def allow(self) -> int | None:
        """None: hold this line back. Else the number of lines held back since the last."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every_s)
        self.at = now
        if self.tokens < 1:
            self.held_back += 1
            return None
        self.tokens -= 1
        held, self.held_back = self.held_back, 0
        return held


REPEAT_LOG_S = 60.0
"""A block at a site already logged is logged again at most this often (with the count)."""
MAX_REPEAT_SITES = 256


class RepeatLimiter:
    """Per culprit site: the first block is logged; repeats within ``every_s`` of that site's
    last line are held back and summed up (count, worst) in its next line."""

    def __init__(self, clock: Callable[[], float], every_s: float = REPEAT_LOG_S) -> None:
        self.clock = clock
        self.every_s = every_s
        # site -> [time of its last line, repeats held back since, worst of those]
        self._sites: OrderedDict[Any, list[float]] = OrderedDict()

    def allow(self, site: Any, duration: float) -> tuple[int, float] | None:
        """None: hold this line back. Else (repeats held back, the worst of them)."""
        now = self.clock()
        entry = self._sites.get(site)
        if entry is None:
            self._sites[site] = [now, 0, 0.0]
            while len(self._sites) > MAX_REPEAT_SITES:
                self._sites.popitem(last=False)
            return 0, 0.0
        self._sites.move_to_end(site)
        if now - entry[0] < self.every_s:
            entry[1] += 1
            entry[2] = max(entry[2], duration)
            return None
        held, worst = int(entry[1]), entry[2]
        entry[:] = [now, 0, 0.0]
        return held, worst
