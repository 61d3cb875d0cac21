"""Test helpers: an app running in its own thread, and a real telnet client for the console."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import telnetlib3

PROMPT = "asyncwatch >>> "
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]")
_BACKSPACED = re.compile(r"[^\x08]\x08")


class AppThread:
    """Runs ``main(app)`` with ``asyncio.run`` in a thread; ``app.loop`` is its loop."""

    def __init__(self, main: Callable[[AppThread], Coroutine[Any, Any, None]]) -> None:
        self.main = main
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-app", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.main(self)

    async def until_stopped(self) -> None:
        """For ``main`` to await at its end: returns once ``close()`` was called."""
        while not self.stop.is_set():
            await asyncio.sleep(0.01)

    def __enter__(self) -> AppThread:
        self.thread.start()
        assert self.ready.wait(30), "app did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


async def _session(host: str, port: int, commands: Sequence[str], timeout: float) -> list[str]:
    reader, writer = await telnetlib3.open_connection(host, port, connect_minwait=0.05)
    buffer = ""

    async def read_more(deadline: float) -> None:
        nonlocal buffer
        data = await asyncio.wait_for(reader.read(65536), max(0.01, deadline - time.monotonic()))
        if not data:
            raise ConnectionError(f"console closed the connection; got {clean(buffer)!r}")
        buffer += data

    deadline = time.monotonic() + timeout
    while PROMPT not in clean(buffer):
        await read_more(deadline)
    outputs = []
    try:
        for command in commands:
            buffer = ""
            writer.write(command + "\r")
            deadline = time.monotonic() + timeout
            while True:
                # The prompt is redrawn with the typed line, then the output, then a new prompt.
                _, newline, rest = clean(buffer).partition("\n")
                if newline and PROMPT in rest:
                    outputs.append(rest.rsplit(PROMPT, 1)[0])
                    break
                await read_more(deadline)
    finally:
        writer.close()
    return outputs


def clean(text: str) -> str:
    """Terminal output as plain text: escape sequences and carriage returns removed, and a
    character followed by a backspace dropped (prompt_toolkit draws " \b" when it renders an
    empty prompt, which can land between two lines of the proxied REPL's output)."""
    return _BACKSPACED.sub("", _ANSI.sub("", text)).replace("\r", "")


def run_commands(
    port: int, commands: Sequence[str], *, host: str = "127.0.0.1", timeout: float = 30.0
) -> list[str]:
    """Connect over telnet, run each command, return what each printed (plain text)."""
    return asyncio.run(_session(host, port, commands, timeout))
