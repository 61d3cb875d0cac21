"""What several subsystems need from asyncio itself: patching classes, finding loops and tasks.

``Patch`` replaces one class attribute and can put it back, but only where ours is still in
place; every subsystem that patches asyncio, uvloop or Starlette classes uses it, so
``uninstall()`` undoes each the same way. ``running_loop`` and ``task_of`` are the C fast
paths (on 3.11 ``asyncio.current_task`` is pure Python) read on hot paths.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

_ABSENT = object()

running_loop: Callable[[], Any] = asyncio.events._get_running_loop
"""The loop running on this thread, or None (the C function, no checks)."""

if sys.version_info >= (3, 12):
    task_of: Callable[[Any], Any] = asyncio.current_task  # C; takes the loop
else:  # asyncio.current_task is pure Python on 3.11
    task_of = asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]


def current_task() -> Any:
    """The task running on this thread's loop, or None (never raises)."""
    loop = running_loop()
    return None if loop is None else task_of(loop)


class Patch:
    """One class attribute replaced by asyncwatch, and how to put it back."""

    __slots__ = ("cls", "name", "ours", "saved")

    def __init__(self, cls: type, name: str, ours: Any) -> None:
        self.cls = cls
        self.name = name
        self.saved = cls.__dict__.get(name, _ABSENT)
        self.ours = ours
        setattr(cls, name, ours)

    def undo(self) -> None:
        if self.cls.__dict__.get(self.name, _ABSENT) is not self.ours:
            return  # someone patched over us: leave theirs in place
        if self.saved is _ABSENT:
            delattr(self.cls, self.name)
        else:
            setattr(self.cls, self.name, self.saved)


def loop_classes() -> list[type]:
    """The loop classes whose constructors and factory accessors are patched: asyncio's, and
    uvloop's if the app imported it (uvloop is never imported just to patch it: the Watch
    patches ``uvloop.Loop`` when the app imports it, see ``UVLOOP``)."""
    classes: list[type] = [asyncio.BaseEventLoop]
    uvloop = sys.modules.get(UVLOOP)
    loop = getattr(uvloop, "Loop", None)
    if isinstance(loop, type):
        classes.append(loop)
    return classes


UVLOOP = "uvloop"
"""The module whose ``Loop`` class ``loop_classes`` adds once it is imported."""
