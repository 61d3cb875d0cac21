"""The middleware under the other ASGI servers (hypercorn, granian), each a real subprocess.

uvicorn is covered by tests/test_asgi.py in-process; here each server runs the same small
Starlette app (a path-parameter route, a streamed response, a websocket) in its own process,
and the figures are read from the app's own ``/metrics`` page (``http_metrics_path``), so they
come from the very process that served the requests, as a user would scrape them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from .conftest import free_port, python_env, wait_for

APP_FILE = """
import asyncwatch
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute

asyncwatch.install(metrics_exporters=("none",), http_metrics_path="/metrics", asgi_auto=False)


async def item(request):
    return JSONResponse({"id": request.path_params["item_id"]})


async def stream(request):
    async def chunks():
        for i in range(3):
            yield b"chunk%d;" % i

    return StreamingResponse(chunks())


async def echo(websocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


app = Starlette(
    routes=[Route("/items/{item_id}", item), Route("/stream", stream), WebSocketRoute("/ws", echo)],
    middleware=[Middleware(asyncwatch.AsyncWatchMiddleware)],
)
"""


def _command(server: str, port: int) -> list[str]:
    bindir = os.path.dirname(sys.executable)
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "app:app", "--bind", f"127.0.0.1:{port}"]
    cli = shutil.which("granian", path=bindir) or "granian"
    return [
        cli, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--loop", "asyncio", "--log-level", "warning", "app:app",
    ]  # fmt: skip


@pytest.fixture(params=["hypercorn", "granian"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The app under ``request.param`` on a free loopback port; yields its base URL."""
    pytest.importorskip(request.param)
    (tmp_path / "app.py").write_text(APP_FILE)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _command(request.param, port),
            cwd=tmp_path,
            env=python_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/items/0").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, timeout=60, what=f"{request.param} to serve")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_other_servers_get_route_metrics_streams_and_websockets(served: str) -> None:
    """Under hypercorn and granian: per-template request metrics, a streamed body whole, and
    websocket metrics, all read back from the serving process's own /metrics page."""
    with httpx.Client(base_url=served) as client:
        for i in range(1, 4):
            assert client.get(f"/items/{i}").json() == {"id": str(i)}
        assert client.get("/stream").content == b"chunk0;chunk1;chunk2;"
    with connect(served.replace("http", "ws", 1) + "/ws") as ws:
        for text in ("a", "b"):
            ws.send(text)
            assert ws.recv(timeout=10) == text

    def page() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        samples = _samples(httpx.get(served + "/metrics").text)
        # the websocket's end is recorded when the server has seen the close
        return (
            samples
            if _value(samples, "asyncwatch_websocket_connection_duration_seconds_count")
            else {}
        )

    samples = wait_for(page, what="the websocket's metrics")
    count = "http_server_request_duration_seconds_count"
    assert _value(samples, count, http_route="/items/{item_id}", http_request_method="GET") == 4
    assert (
        _value(samples, count, http_route="/items/{item_id}", http_response_status_code="200") == 4
    )
    assert _value(samples, count, http_route="/stream") == 1
    assert _value(samples, "http_server_response_body_size_bytes_sum", http_route="/stream") == 21
    assert not any("/items/1" in str(labels) for _, labels in samples)  # never the raw path
    messages = "asyncwatch_websocket_messages_total"
    assert (
        _value(samples, messages, http_route="/ws", asyncwatch_websocket_direction="received") == 2
    )
    assert _value(samples, messages, http_route="/ws", asyncwatch_websocket_direction="sent") == 2
