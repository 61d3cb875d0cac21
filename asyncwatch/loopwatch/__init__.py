"""Blocked-loop detection: the heartbeat, the watchdog thread that names the culprit while
the loop is held, precise mode, GIL-holding C calls (faulthandler) and garbage collections.

The Watch builds one ``LoopWatch``; its findings are ``BlockedLoop``.
"""

from ._blocked import BlockedLoop
from ._watchdog import LoopWatch

__all__ = ["BlockedLoop", "LoopWatch"]
