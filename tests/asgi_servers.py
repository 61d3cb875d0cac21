"""Real servers for the ASGI tests: uvicorn in a thread on a free port, raw socket clients."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

from .conftest import wait_for


class Uvicorn:
    """``with Uvicorn(app) as server:`` serves ``app`` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app: Any, **options: Any) -> None:
        options.setdefault("lifespan", "off")
        options.setdefault("loop", "asyncio")
        options.setdefault("log_level", "critical")
        options.setdefault("timeout_graceful_shutdown", 5)
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, **options)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.port = 0

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), what="uvicorn start")
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def raw_exchange(port: int, data: bytes, *, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes
    (or until ``timeout`` passes with nothing more to read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` HTTP/1.1 responses with Content-Length bodies from ``sock``."""
    buffer = b""
    out = []
    while len(out) < count:
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed early")
            buffer += chunk
        head, _, rest = buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed early")
            rest += chunk
        out.append(head + b"\r\n\r\n" + rest[:length])
        buffer = rest[length:]
    return out
