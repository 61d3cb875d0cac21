"""A culprit is the app's frame (or a library's it called), never asyncio's own."""

from __future__ import annotations

import asyncio
import os
import threading

from asyncwatch._core.stacks import culprit_of, current_frames

from .conftest import wait_for

ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


def test_a_loop_in_its_own_machinery_has_no_culprit() -> None:
    """A loop thread idle in select(): only asyncio's and selectors' frames from the callback
    depth on, so no culprit (it used to be the selectors frame)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    loop.call_soon(ready.set)
    thread = threading.Thread(target=loop.run_forever, name="idle-loop")
    thread.start()
    try:
        assert ready.wait(20)

        def chain() -> list:  # type: ignore[type-arg]
            frame = current_frames().get(thread.ident or 0)
            frames = []
            while frame is not None:
                frames.append(frame)
                frame = frame.f_back
            frames.reverse()
            return frames if frames and frames[-1].f_code.co_name == "select" else []

        frames = wait_for(chain, what="the loop in select()")
        depth = next(
            i for i, f in enumerate(frames) if f.f_code.co_filename.startswith(ASYNCIO_DIR)
        )
        assert culprit_of(frames, depth) is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)
        loop.close()
