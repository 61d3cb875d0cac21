"""Apps and fixtures shared by the ASGI tests (real Starlette apps, real OTel SDK readers)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import asyncwatch

from .conftest import collect, wait_for


class Boom(Exception):
    """Raised by the app on purpose."""


class Gate:
    """Lets a test thread hold the app at a point and release it (no sleeping)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._open = False

    async def wait(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        if self._open:
            return
        self.reached.set()
        await self._event.wait()

    def open(self) -> None:
        wait_for(self.reached.is_set, what="the app to reach the gate")
        self._open = True
        assert self._loop is not None and self._event is not None
        self._loop.call_soon_threadsafe(self._event.set)


async def child_ok() -> None:
    await asyncio.sleep(0)


async def child_fail() -> None:
    raise KeyError("child")


@dataclass
class Controls:
    """What the test app's endpoints wait on and record."""

    stream: Gate = field(default_factory=Gate)
    background: Gate = field(default_factory=Gate)
    raised: list[BaseException] = field(default_factory=list)
    background_fails: bool = False
    events: list[str] = field(default_factory=list)


def make_app(c: Controls, **kwargs: Any) -> Starlette:
    """A Starlette app with one endpoint per ASGI shape the tests exercise."""

    async def item(request: Request) -> Response:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body[::-1], media_type="application/octet-stream")

    async def boom(request: Request) -> Response:
        exc = Boom("the app failed")
        c.raised.append(exc)
        raise exc

    async def unavailable(request: Request) -> Response:
        return PlainTextResponse("later", status_code=503)

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"a" * 10
            await c.stream.wait()
            yield b"b" * 20

        return StreamingResponse(chunks())

    async def forever(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 1000
                await asyncio.sleep(0)

        return StreamingResponse(chunks())

    async def job() -> None:
        await c.background.wait()
        if c.background_fails:
            raise Boom("background failed")
        c.events.append("background done")

    async def background(request: Request) -> Response:
        return JSONResponse({"queued": True}, background=BackgroundTask(job))

    async def spawn(request: Request) -> Response:
        tasks = [asyncio.create_task(child_ok()), asyncio.create_task(child_fail())]
        await asyncio.gather(*tasks, return_exceptions=True)
        return PlainTextResponse("spawned")

    async def context(request: Request) -> Response:
        span = trace.get_current_span().get_span_context()
        return JSONResponse(
            {"trace_id": f"{span.trace_id:032x}", "user": baggage.get_baggage("user")}
        )

    async def custom(request: Request) -> Response:
        response = PlainTextResponse("made", status_code=201, headers={"x-custom": "1"})
        response.set_cookie("a", "1")
        response.set_cookie("b", "2")
        return response

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())

    async def ws_boom(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise Boom("websocket handler failed")

    routes = [
        Route("/items/{item_id}", item),
        Route("/echo", echo, methods=["POST"]),
        Route("/boom", boom),
        Route("/unavailable", unavailable),
        Route("/stream", stream),
        Route("/forever", forever),
        Route("/background", background),
        Route("/spawn", spawn),
        Route("/context/{x}", context),
        Route("/custom", custom),
        Route("/healthz", health),
        Route("/ready", health),
        WebSocketRoute("/ws/{room}", ws_echo),
        WebSocketRoute("/wsboom", ws_boom),
    ]
    return Starlette(routes=routes, **kwargs)


@dataclass
class Observed:
    """asyncwatch installed (strict), with an in-memory metric reader and span exporter."""

    watch: asyncwatch.Watch
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter

    def metrics(self) -> dict[str, list[Any]]:
        return collect(self.reader)

    def points(self, name: str, **attrs: Any) -> list[Any]:
        """Points of ``name`` whose attributes include ``attrs`` (dots spelled __)."""
        wanted = {k.replace("__", "."): v for k, v in attrs.items()}
        return [
            p
            for p in self.metrics().get(name, [])
            if all(p.attributes.get(k) == v for k, v in wanted.items())
        ]

    def count(self, name: str, **attrs: Any) -> int:
        """Summed count (histograms) or value (sums) over the matching points."""
        return sum(
            getattr(p, "count", None) or getattr(p, "value", 0) for p in self.points(name, **attrs)
        )

    def server_spans(self) -> list[Any]:
        return [s for s in self.spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]


@contextlib.contextmanager
def observing(
    *, spans: tuple[TracerProvider, InMemorySpanExporter] | None = None, **settings: Any
) -> Iterator[Observed]:
    """Install asyncwatch in strict mode with an in-memory reader and a real TracerProvider
    (``spans``: the provider and its exporter, if the test shares them with the app)."""
    reader = InMemoryMetricReader()
    if spans is None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider, exporter = spans
    settings.setdefault("asgi_auto", False)
    watch = asyncwatch.install(
        metrics_exporters=("none",),
        raise_errors=True,
        timed_per_s=float("inf"),
        metric_readers=[reader],
        tracer_provider=provider,
        **settings,
    )
    try:
        yield Observed(watch, reader, exporter)
    finally:
        asyncwatch.uninstall(timeout_s=2)
        provider.shutdown()


@pytest.fixture(name="observed")
def observed_fixture() -> Iterator[Observed]:
    """asyncwatch installed for an explicitly wrapped app (no auto-add)."""
    with observing() as obs:
        yield obs
