"""Multi-process servers: every worker observed, exporting under its own pid; no deadlock."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ROOT, free_port, python_env, run_python, wait_for

BIN = os.path.dirname(sys.executable)
ASYNCWATCH = shutil.which("asyncwatch", path=BIN) or "asyncwatch"
SPAN = 8


@contextmanager
def server(cmd: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError("server did not stop on SIGTERM (deadlock?)") from None
        finally:
            if proc.stderr is not None:
                proc.stderr.close()


def serving_pids(port: int, proc: subprocess.Popen[str], workers: int) -> set[int]:
    """Send fresh-connection requests until responses came from ``workers`` processes."""
    seen: set[int] = set()

    def poll() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(httpx.TransportError):  # workers still starting
            seen.add(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["pid"])
        return len(seen) >= workers

    wait_for(poll, timeout=60, what=f"{workers} workers to answer")
    return seen


def scrape_all(first: int) -> dict[int, float]:
    """pid -> lookup tasks created, for every endpoint in the port span."""
    found: dict[int, float] = {}
    for port in range(first, first + SPAN + 1):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except (urllib.error.URLError, ConnectionError, OSError):
            continue
        pid, created = None, 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "target_info":
                    pid = int(s.labels["process_pid"])
                if (
                    s.name == "asyncwatch_task_created_total"
                    and s.labels.get("code_function_name") == "examples.hello_asgi.lookup"
                ):
                    created = s.value
        if pid is not None:
            found[pid] = created
    return found


def check_workers(cmd_tail: list[str], workers: int, *, wrap: bool = True) -> None:
    metrics_port, app_port = free_port(), free_port()
    tail = [part.replace("APP_PORT", str(app_port)) for part in cmd_tail]
    if wrap:
        cmd = [
            ASYNCWATCH,
            "run",
            "--port",
            str(metrics_port),
            "--port-span",
            str(SPAN),
            "--",
            *tail,
        ]
        env = python_env()
    else:
        cmd = tail
        env = python_env(
            ASYNCWATCH_PROMETHEUS_PORT=str(metrics_port), ASYNCWATCH_PROMETHEUS_PORT_SPAN=str(SPAN)
        )
    with server(cmd, env) as proc:
        pids = serving_pids(app_port, proc, workers)

        def every_worker_reports() -> dict[int, float] | None:
            found = scrape_all(metrics_port)
            ok = all(found.get(pid, 0) > 0 for pid in pids)
            return found if ok else None

        found = wait_for(every_worker_reports, timeout=30, what="each worker's endpoint")
        assert pids <= set(found)


def test_uvicorn_workers_each_export_under_their_own_pid() -> None:
    """uvicorn --workers 2: both workers observed, each on its own endpoint."""
    check_workers(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.hello_asgi:app",
            "--workers",
            "2",
            "--port",
            "APP_PORT",
            "--log-level",
            "warning",
        ],
        2,
    )


@pytest.mark.parametrize("preload", [False, True], ids=["fork", "preload"])
def test_gunicorn_uvicorn_workers_each_export_under_their_own_pid(preload: bool) -> None:
    """gunicorn with UvicornWorker, with and without --preload: every worker observed."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("uvicorn_worker")
    cmd = [
        os.path.join(BIN, "gunicorn"),
        "-w",
        "2",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-b",
        "127.0.0.1:APP_PORT",
        "--log-level",
        "warning",
    ]
    if preload:
        cmd.append("--preload")
    check_workers([*cmd, "examples.hello_asgi:app"], 2)


def test_preloaded_app_that_installs_in_code_forks_cleanly() -> None:
    """install() at import in a gunicorn --preload master: each forked worker starts over."""
    pytest.importorskip("uvicorn_worker")
    cmd = [
        os.path.join(BIN, "gunicorn"),
        "-w",
        "2",
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-b",
        "127.0.0.1:APP_PORT",
        "--log-level",
        "warning",
        "--preload",
        "examples.installed_asgi:app",
    ]
    check_workers(cmd, 2, wrap=False)


def test_forked_child_starts_from_zero_with_its_own_exporter() -> None:
    """os.fork() after install: the child counts only its own tasks and serves its own port."""
    code = """
import asyncio, os, sys, urllib.request
import asyncwatch
w = asyncwatch.install(prometheus_port=int(sys.argv[1]), prometheus_port_span=4)
async def job(): pass
async def many(n):
    await asyncio.gather(*(job() for _ in range(n)))
asyncio.run(many(10))
parent_url = w.prometheus_url
pid = os.fork()
if pid == 0:
    asyncio.run(many(3))
    s = asyncwatch.stats()["__main__.job"]
    own = w.prometheus_url not in (None, parent_url)
    print("child", s.created, own, flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent", asyncwatch.stats()["__main__.job"].created, flush=True)
"""
    port = free_port()
    result = run_python(code, str(port))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child 3 True", "parent 10"]


def test_fork_while_http_figures_are_folded_leaves_the_child_working() -> None:
    """A fork while another thread folds the HTTP figures (the shard's lock held): the child
    starts from zero and its requests are recorded and folded, nothing hangs."""
    code = """
import asyncio, os, sys
import asyncwatch
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
w = asyncwatch.install(metrics_exporters=("none",), http_spans=False)
async def hello(request):
    return PlainTextResponse("hi")
app = asyncwatch.AsyncWatchMiddleware(Starlette(routes=[Route("/hi", hello)]))
async def serve(n):
    for _ in range(n):
        scope = {"type": "http", "method": "GET", "scheme": "http", "http_version": "1.1",
                 "path": "/hi", "raw_path": b"/hi", "root_path": "", "query_string": b"",
                 "headers": [], "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1)}
        async def receive():
            return {"type": "http.request", "body": b""}
        async def send(message):
            pass
        await app(scope, receive, send)
asyncio.run(serve(5))
shard = w.http._shards[0]
shard.lock.acquire()  # as a reader's fold in another thread would hold it at fork time
pid = os.fork()
if pid == 0:
    asyncio.run(serve(300))
    rows = w.http_routes()
    print("child", sum(r["requests"] for r in rows), flush=True)
    os._exit(0)
shard.lock.release()
os.waitpid(pid, 0)
print("parent", sum(r["requests"] for r in w.http_routes()), flush=True)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child 300", "parent 5"]
