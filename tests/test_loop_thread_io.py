"""asyncwatch opens no file on the event loop's thread.

A file read on the loop's thread is a blocking call: the app's own blocking-call detector
(blockbuster, as anyio's test suite runs it, or aiodebug) flags it, and on a slow disk it holds
the loop. Whatever asyncwatch reads from ``/proc`` is read from its own threads. The check uses
the interpreter's ``open`` audit event, which fires for every file opened by any code.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any

import asyncwatch

_opens: list[tuple[int, str]] = []
_recording = threading.Event()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _recording.is_set():
        _opens.append((threading.get_ident(), str(args[0])))


sys.addaudithook(_audit)  # audit hooks cannot be removed: this one is off unless recording


def test_no_file_is_opened_on_the_loop_thread() -> None:
    asyncwatch.install(
        metrics_exporters=("none",),
        raise_errors=True,
        deadlock_detection=True,
        advisor=True,
    )
    loop_thread: list[int] = []

    async def work(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 3))
        return await asyncio.get_running_loop().run_in_executor(None, pow, i, 2)

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        for _ in range(5):
            await asyncio.gather(*(work(i) for i in range(50)))
        # Let every periodic job of asyncwatch's (heartbeat, scans, sampler) come round.
        await asyncio.sleep(0.3)

    _recording.set()
    try:
        for _ in range(3):  # each new loop is armed on its first iteration
            asyncio.run(main())
    finally:
        _recording.clear()
    on_loop = sorted({path for ident, path in _opens if ident in loop_thread})
    assert on_loop == [], f"files opened on the loop's thread: {on_loop}"


def test_running_loops_starts_no_thread_after_install() -> None:
    """Every thread of asyncwatch's starts in install(): an app that counts its threads (anyio's
    suite checks that a worker thread went away after its loop closed) sees the same count
    before, during and after its loops."""
    asyncwatch.install(raise_errors=True, deadlock_detection=True, advisor=True)
    before = {t.ident for t in threading.enumerate()}
    during: list[set[int | None]] = []

    async def main() -> None:
        await asyncio.gather(*(asyncio.sleep(0.001) for _ in range(20)))
        during.append({t.ident for t in threading.enumerate()})

    asyncio.run(main())
    after = {t.ident for t in threading.enumerate()}
    names = {t.ident: t.name for t in threading.enumerate()}
    assert during[0] == before, [names.get(i) for i in during[0] - before]
    assert after == before
