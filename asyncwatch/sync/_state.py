"""The state asyncwatch keeps per primitive (``PrimitiveState``, under the instance
attribute ``STATE_ATTR``), how it is read back (``state_of``), and the hooks other components
subclass to hear about primitives (``PrimitiveObserver``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._sites import line_of, name_at

if TYPE_CHECKING:
    from ._tracker import PrimitiveTracker

STATE_ATTR = "_asyncwatch_state"


class PrimitiveState:
    """What asyncwatch knows about one Lock, Semaphore, Condition, Event or Queue.

    Only ``tracker``, ``kind`` and the creation site are set at creation; the rest keep the
    class defaults until used (creating a lock stays cheap).
    """

    holder: Any = None  # Lock: the task holding it
    holders: dict[Any, int] | None = None  # Semaphore: task -> permits held
    initial: int | None = None  # Semaphore: permits at creation (None: unknown)
    uncertain = False  # Semaphore: released by a task that did not hold it
    part_of: PrimitiveState | None = None  # a Condition's lock: the Condition
    # the loop it was last acquired on (finds the current task cheaply)
    loop: asyncio.AbstractEventLoop | None = None
    waits = 0  # acquires that found it taken
    wait_s = 0.0  # total time those acquires waited
    track: Any = None  # Semaphore: the advisor's level track (see ``track_semaphore``)
    ordinal = 0  # numbered among the objects described from the same site (``number()``)
    _name: str | None

    def __init__(self, tracker: PrimitiveTracker, kind: str, where: tuple[Any, int] | None):
        self.tracker = tracker
        self.kind = kind
        self._where = where

    @property
    def site(self) -> tuple[str, int, str] | None:
        """(filename, line, function) where the app created it (None: before install)."""
        where = self._where
        if where is None:
            return None
        code, offset = where
        function = getattr(code, "co_qualname", code.co_name)
        return (code.co_filename, line_of(code, offset), function)

    @property
    def name(self) -> str | None:
        """The variable it was assigned to where the app created it, if that can be read
        (see ``name_at``); worked out once, when a finding needs it."""
        try:
            return self._name
        except AttributeError:
            pass
        where = self._where
        name = name_at(*where) if where is not None else None
        self._name = name
        return name

    def held(self) -> int:
        """Permits (or the lock) held now, by tasks asyncwatch saw acquire them."""
        if self.kind == "Lock":
            return 0 if self.holder is None else 1
        return sum(self.holders.values()) if self.holders else 0

    def describe(self) -> str:
        """'Lock 'ledger' created at app.py:12 in main' (or 'the lock of Condition ...')."""
        if self.part_of is not None:
            return f"the lock of {self.part_of.describe()}"
        site = self.site
        if site is None:
            return f"{self.kind} (created before asyncwatch was installed)"
        filename, line, function = site
        name = self.name
        if name:
            named = f" {name!r}"
        elif self.ordinal and self.tracker.site_numbers.get(self._where_key(), 0) > 1:
            named = f" #{self.ordinal}"  # several made on one line, none with a name
        else:
            named = ""
        return f"{self.kind}{named} created at {filename}:{line} in {function}"

    def _where_key(self) -> tuple[Any, ...] | None:
        where = self._where
        return None if where is None else (id(where[0]), where[1])

    def number(self) -> None:
        """Number it among the objects described so far that were created at the same place
        (``Lock #2 created at ...`` when the source gives no name to tell them apart)."""
        if self.ordinal or self._where is None:
            return
        key = self._where_key()
        numbers = self.tracker.site_numbers
        if len(numbers) > 10_000:
            numbers.clear()  # bounded; numbering restarts
        self.ordinal = numbers[key] = numbers.get(key, 0) + 1


class PrimitiveObserver:
    """Extension point: override any of these; only overridden methods are ever called."""

    def created(self, obj: Any, state: PrimitiveState) -> None:
        """A Lock/Semaphore/Condition/Event/Queue was created while installed."""

    def acquired(
        self, state: PrimitiveState, task: asyncio.Task[Any], waited_s: float | None
    ) -> None:
        """A Lock or Semaphore was acquired by ``task``; ``waited_s`` is None if it was free."""

    def released(self, state: PrimitiveState, task: asyncio.Task[Any]) -> None:
        """A Lock or Semaphore was released (``task`` is the releasing task, or None)."""


def state_of(obj: Any) -> PrimitiveState | None:
    """The state asyncwatch keeps for ``obj``, if any (any tracker, current or not).

    Creation stores only ``(tracker, kind, site)`` (``(tracker, kind, code, offset)`` when
    the app's own code made it: one tuple fewer per object); it becomes a ``PrimitiveState``
    here, or on the first acquire.
    """
    try:
        state = vars(obj).get(STATE_ATTR)
    except TypeError:
        return None
    if state is None or type(state) is PrimitiveState:
        return state
    if type(state) is tuple:
        if len(state) == 4:  # made by the app's own code: (tracker, kind, code, offset)
            tracker, kind, code, offset = state
            state = PrimitiveState(tracker, kind, (code, offset))
        elif len(state) == 3:  # (tracker, kind, where)
            tracker, kind, where = state
            state = PrimitiveState(tracker, kind, where)
        else:
            return None
        setattr(obj, STATE_ATTR, state)
        return state
    return None
