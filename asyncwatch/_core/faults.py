"""What asyncwatch does when its own code fails: count, log once, maybe disable, never raise.

Every hook that runs inside the application (task factory, done-callbacks, middleware) calls
``faults.report(hook, exc)`` from an ``except`` block. The error is counted for the
``asyncwatch.internal.errors`` metric and logged once per hook on the ``asyncwatch`` logger. A
hook that keeps failing (``limit`` errors) is told to switch itself off. In strict mode
(``ASYNCWATCH_RAISE=1``, for asyncwatch's own tests) the error is raised instead.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("asyncwatch")


class Faults:
    """Counts internal errors per hook; see the module docstring."""

    def __init__(self, *, raise_errors: bool = False, limit: int = 100) -> None:
        self.raise_errors = raise_errors
        self.limit = limit
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def report(self, hook: str, exc: BaseException) -> bool:
        """Record an internal error; True means the hook should disable itself."""
        with self._lock:
            n = self.counts.get(hook, 0) + 1
            self.counts[hook] = n
        if self.raise_errors:
            raise exc
        if n == 1:
            logger.error(
                "asyncwatch: internal error in the %s hook; the application is unaffected "
                "(counted in asyncwatch.internal.errors, logged once)",
                hook,
                exc_info=exc,
            )
        if n == self.limit:
            logger.error("asyncwatch: the %s hook failed %d times and is now off", hook, n)
        return n >= self.limit

    def after_fork(self) -> None:
        """In a forked child: a new lock (another thread may have held this one at fork
        time) and no counts (the child is a new instance with its own series)."""
        self._lock = threading.Lock()
        self.counts.clear()
