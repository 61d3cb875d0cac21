"""FastAPI, mounted apps and routers, auto-adding, FastAPI's own telemetry, ``asyncwatch run``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

import asyncwatch
from asyncwatch._core import names as n

from .asgi_apps import Controls, child_ok, make_app, observing
from .asgi_servers import Uvicorn
from .conftest import collect, free_port, python_env, run_python, wait_for

DURATION = n.HTTP_SERVER_DURATION.name
TASKS_DONE = n.HTTP_SERVER_TASKS_COMPLETED.name


def fastapi_app(static: Path, **kwargs: Any) -> FastAPI:
    """A FastAPI app with a router, a mounted FastAPI app, a mounted Starlette app with a
    path parameter in its mount path, static files and a websocket."""
    import asyncio

    app = FastAPI(**kwargs)
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        await asyncio.create_task(child_ok())
        return {"id": user_id}

    app.include_router(users)
    v2 = FastAPI()

    @v2.get("/things/{tid}")
    async def thing(tid: str) -> dict[str, str]:
        return {"tid": tid}

    async def deep(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["x"])

    app.mount("/v2", v2)
    app.mount("/org/{org}", Starlette(routes=[Route("/deep/{x}", deep)]))
    app.mount("/static", StaticFiles(directory=static))

    @app.websocket("/ws/{room}")
    async def ws(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room)
        await websocket.close()

    return app


PATHS = {
    "/users/3": "/users/{user_id}",
    "/v2/things/a": "/v2/things/{tid}",
    "/org/acme/deep/9": "/org/{org}/deep/{x}",
    "/static/hello.txt": "/static/{path}",
}


@pytest.fixture
def static(tmp_path: Path) -> Path:
    (tmp_path / "hello.txt").write_text("hello")
    return tmp_path


@pytest.mark.parametrize("how", ["add_middleware", "wrapped", "auto"])
def test_fastapi_routes_mounts_and_routers_get_their_templates(static: Path, how: str) -> None:
    """Router prefixes, mounted apps (with mount path parameters) and static mounts."""
    with observing(asgi_auto=how == "auto") as obs:
        app: Any = fastapi_app(static)
        if how == "add_middleware":
            app.add_middleware(asyncwatch.AsyncWatchMiddleware)
        elif how == "wrapped":
            app = asyncwatch.AsyncWatchMiddleware(app)
        with Uvicorn(app) as server, httpx.Client(base_url=server.url) as client:
            for path in PATHS:
                assert client.get(path).status_code == 200, path
        routes = {p.attributes.get("http.route"): p.count for p in obs.metrics()[DURATION]}
        assert routes == dict.fromkeys(PATHS.values(), 1)
        spans = sorted(s.name for s in obs.server_spans())
        assert spans == sorted(f"GET {t}" for t in PATHS.values())
        assert obs.count(TASKS_DONE, http__route="/users/{user_id}") == 1


def test_auto_added_once_even_when_the_app_added_it_or_nests_apps() -> None:
    """Auto-adding never doubles: an app that added the middleware, nested Starlette apps."""
    with observing(asgi_auto=True) as obs:
        explicit = make_app(Controls(), middleware=[Middleware(asyncwatch.AsyncWatchMiddleware)])
        with Uvicorn(explicit) as server:
            assert httpx.get(server.url + "/items/1").status_code == 200
        inner = Starlette(routes=[Route("/leaf/{x}", lambda r: PlainTextResponse("leaf"))])
        outer = Starlette(routes=[Route("/", lambda r: PlainTextResponse("root"))])
        outer.mount("/in/{tenant}", inner)
        with Uvicorn(outer) as server:
            assert httpx.get(server.url + "/in/t1/leaf/2").text == "leaf"
        routes = {p.attributes.get("http.route"): p.count for p in obs.metrics()[DURATION]}
        assert routes == {"/items/{item_id}": 1, "/in/{tenant}/leaf/{x}": 1}


@pytest.mark.parametrize("how", ["add_middleware", "wrapped", "auto"])
def test_fastapi_native_telemetry_is_not_counted_twice(static: Path, how: str) -> None:
    """With FastAPI's own OTel telemetry on, FastAPI records the HTTP metrics and the server
    span; asyncwatch adds only what FastAPI lacks, and the request's tasks nest under
    FastAPI's span."""
    # FastAPI records its own telemetry from 0.142 on; scripts/frameworks also runs older ones
    pytest.importorskip("fastapi.telemetry", reason="this FastAPI has no telemetry of its own")
    fastapi_reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[fastapi_reader])
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = {"meter_provider": meter_provider, "tracer_provider": tracer_provider}
    with observing(
        spans=(tracer_provider, exporter),  # one trace for FastAPI's spans and asyncwatch's
        asgi_auto=how == "auto",
        task_spans=("tests.asgi_apps.child_*",),
    ) as obs:
        app: Any = fastapi_app(static, telemetry=telemetry)
        if how == "add_middleware":
            app.add_middleware(asyncwatch.AsyncWatchMiddleware)
        elif how == "wrapped":
            app = asyncwatch.AsyncWatchMiddleware(app)
        with Uvicorn(app) as server, httpx.Client(base_url=server.url) as client:
            for _ in range(2):
                assert client.get("/users/5").status_code == 200
        theirs = collect(fastapi_reader)[DURATION]
        assert [(p.attributes["http.route"], p.count) for p in theirs] == [("/users/{user_id}", 2)]
        assert obs.points(DURATION) == []
        assert obs.count(n.HTTP_SERVER_ACTIVE.name) == 0
        assert obs.count(TASKS_DONE, http__route="/users/{user_id}") == 2
        spans = exporter.get_finished_spans()
        servers = [s for s in spans if s.kind == SpanKind.SERVER]
        assert [s.instrumentation_scope.name for s in servers] == ["fastapi", "fastapi"]
        children = [s for s in spans if s.name == "tests.asgi_apps.child_ok"]
        assert len(children) == 2
        by_id = {s.context.span_id: s for s in spans}
        for child in children:  # under FastAPI's endpoint span, itself under its server span
            ancestors = []
            span = child
            while span.parent is not None and span.parent.span_id in by_id:
                span = by_id[span.parent.span_id]
                ancestors.append(span.name)
            assert ancestors == ["fastapi.endpoint", "GET /users/{user_id}"]
    meter_provider.shutdown()


def test_uninstall_restores_what_auto_adding_patched() -> None:
    """build_middleware_stack and BackgroundTask.__call__ are put back; no import hook stays.
    (FastAPI before 0.142 has no build_middleware_stack of its own: Starlette's serves it.)"""
    from fastapi.applications import FastAPI as FastAPIClass

    methods = [(Starlette, "build_middleware_stack"), (BackgroundTask, "__call__")]
    if "build_middleware_stack" in FastAPIClass.__dict__:
        methods.append((FastAPIClass, "build_middleware_stack"))
    originals = [cls.__dict__[name] for cls, name in methods]
    hooks = list(sys.meta_path)
    with observing(asgi_auto=True):
        for (cls, name), original in zip(methods, originals, strict=True):
            assert cls.__dict__[name] is not original, (cls, name)
    assert [cls.__dict__[name] for cls, name in methods] == originals
    assert sys.meta_path == hooks


def test_apps_imported_after_install_are_patched_then_restored() -> None:
    """In a fresh interpreter: install, then import Starlette; uninstall restores it."""
    code = textwrap.dedent(
        """
        import sys
        import asyncwatch
        asyncwatch.install(metrics_exporters="none")
        assert "starlette" not in sys.modules
        from starlette.applications import Starlette
        from fastapi import FastAPI
        patched = Starlette.build_middleware_stack
        assert getattr(patched, "_asyncwatch", False), patched
        assert getattr(FastAPI.build_middleware_stack, "_asyncwatch", False)
        asyncwatch.uninstall()
        assert Starlette.build_middleware_stack is patched.__wrapped__
        assert not any(type(f).__name__ == "_PostImportHook" for f in sys.meta_path)
        print("ok")
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


APP_FILE = textwrap.dedent(
    """
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"id": item_id}

    async def deep(request):
        return PlainTextResponse("deep")

    app.mount("/sub/{x}", Starlette(routes=[Route("/deep", deep)]))
    """
)


def test_asyncwatch_run_adds_the_middleware_to_an_unchanged_app(tmp_path: Path) -> None:
    """``asyncwatch run -- uvicorn app:app``: route-labelled HTTP metrics, no code change."""
    (tmp_path / "app.py").write_text(APP_FILE)
    bindir = os.path.dirname(sys.executable)
    asyncwatch_cli = shutil.which("asyncwatch", path=bindir) or "asyncwatch"
    uvicorn_cli = shutil.which("uvicorn", path=bindir) or "uvicorn"
    app_port, metrics_port = free_port(), free_port()
    env = python_env(ASYNCWATCH_PROMETHEUS_PORT=str(metrics_port))
    proc = subprocess.Popen(
        [
            asyncwatch_cli,
            "run",
            "--",
            uvicorn_cli,
            "app:app",
            "--port",
            str(app_port),
            "--log-level",
            "warning",
            "--loop",
            "asyncio",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{app_port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/items/1").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                return False

        wait_for(up, timeout=60, what="the app to serve")
        assert httpx.get(url + "/items/2").json() == {"id": 2}
        assert httpx.get(url + "/sub/a/deep").text == "deep"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    counts = {
        s.labels.get("http_route"): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "http_server_request_duration_seconds_count"
    }
    assert counts == {"/items/{item_id}": 2, "/sub/{x}/deep": 1}
