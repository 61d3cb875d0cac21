"""Start-up and exit (issue 17): load only what the configuration uses, stop without waiting.

Behaviour, not timing (the figures are in benchmarks/startup.py): each check runs in a fresh
interpreter and reads ``sys.modules``, or gives a process a wait that would never end (an hour
of poll or export interval) and checks it still exits, within the test's deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from .conftest import python_env, run_python

ASYNCWATCH = shutil.which("asyncwatch", path=os.path.dirname(sys.executable)) or "asyncwatch"

# what a default install() does not need until something uses it
HEAVY = (
    "opentelemetry.sdk",
    "opentelemetry.exporter.",  # an exporter (its namespace package is found, not loaded)
    "prometheus_client",
    "starlette",
    "fastapi",
    "aiomonitor",
    "yappi",
)

LOADED = textwrap.dedent(
    """
    import json, sys
    def loaded(prefixes):
        return sorted({m for m in sys.modules if m.split(".")[0] in ("opentelemetry",
                       "prometheus_client", "starlette", "fastapi", "aiomonitor", "yappi")
                       and m.startswith(prefixes)})
    """
)


def short_program(tasks: int) -> str:
    """Program text: a default install() (the endpoint on a free port) and ``tasks`` tasks of
    ``__main__.work`` run to completion; ``watch`` is the Watch."""
    return textwrap.dedent(
        f"""
        import asyncio
        import asyncwatch
        watch = asyncwatch.install(prometheus_port=0)
        async def work(i):
            await asyncio.sleep(0)
        async def main():
            await asyncio.gather(*(work(i) for i in range({tasks})))
        asyncio.run(main())
        """
    )


def _heavy(names: list[str]) -> list[str]:
    return [m for m in names if m.startswith(HEAVY)]


def test_import_loads_no_dependency() -> None:
    """``import asyncwatch`` loads none of its dependencies; the public names still resolve."""
    code = LOADED + textwrap.dedent(
        """
        import asyncwatch
        before = loaded(("opentelemetry", "prometheus_client", "starlette", "fastapi",
                         "aiomonitor", "yappi", "psutil"))
        names = [asyncwatch.Config.__name__, asyncwatch.ConfigError.__name__,
                 asyncwatch.Stats.__name__, asyncwatch.profile.__name__]
        from asyncwatch import AsyncWatchMiddleware, Recommendation, Watch, install
        assert asyncwatch.current() is None and not asyncwatch.stats().installed
        assert set(asyncwatch.__all__) <= set(dir(asyncwatch))
        print(json.dumps({"before": before, "names": names}))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["before"] == []
    assert out["names"] == ["Config", "ConfigError", "Stats", "profile"]


def test_default_install_loads_the_sdk_only_at_the_first_scrape() -> None:
    """A default install() and a whole asyncio program load no OpenTelemetry SDK, exporter,
    prometheus_client, starlette, aiomonitor or yappi; the first scrape of /metrics builds the
    pipeline and serves asyncwatch's figures of what ran before it."""
    code = LOADED + short_program(5) + textwrap.dedent(
        """
        import urllib.request
        before = loaded(("opentelemetry", "prometheus_client", "starlette", "fastapi",
                         "aiomonitor", "yappi"))
        page = urllib.request.urlopen(watch.prometheus_url, timeout=30).read().decode()
        after = loaded(("opentelemetry.sdk",))
        asyncwatch.uninstall()
        print(json.dumps({"before": before, "after": after, "page": page}))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert _heavy(out["before"]) == [], out["before"]
    assert "opentelemetry.sdk.metrics" in out["after"]
    assert 'asyncwatch_task_created_total{code_function_name="__main__.work"} 5.0' in out["page"]


def test_default_install_loads_only_the_parts_it_runs() -> None:
    """An install() in a program that serves no HTTP loads no HTTP figures (made when a
    middleware first binds), no asyncio module the app did not load (the deadlock detector
    knows asyncio's I/O files by path) and one twin of the task path, the one in use."""
    code = short_program(5) + textwrap.dedent(
        """
        import json, sys
        from asyncwatch.tasks import ACCELERATOR
        loaded = sorted(m for m in sys.modules if m.startswith(("asyncwatch", "asyncio")))
        routes = watch.http_routes()
        asyncwatch.uninstall()
        print(json.dumps({"loaded": loaded, "path": ACCELERATOR, "routes": routes}))
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    loaded = set(out["loaded"])
    assert "asyncwatch.asgi._http" not in loaded
    assert "asyncio.proactor_events" not in loaded and "asyncio.windows_events" not in loaded
    twins = {"asyncwatch.tasks._fastpath", "asyncwatch.tasks._purepath"} & loaded
    expected = "asyncwatch.tasks._fastpath" if out["path"].startswith("compiled") else (
        "asyncwatch.tasks._purepath")
    assert twins == {expected}, (twins, out["path"])
    assert out["routes"] == []


def test_metrics_server_stops_without_waiting_for_a_poll_interval() -> None:
    """uninstall() with the endpoint serving returns at once: the server's loop sleeps on its
    socket and a wake-up pipe, not on a poll interval (here made an hour for socketserver's
    own loop, which the endpoint used before and would then wait out)."""
    code = textwrap.dedent(
        """
        import socketserver, urllib.request
        socketserver.BaseServer.serve_forever.__defaults__ = (3600.0,)
        import asyncwatch
        watch = asyncwatch.install(prometheus_port=0)
        urllib.request.urlopen(watch.prometheus_url, timeout=30).read()
        asyncwatch.uninstall()
        print("stopped")
        """
    )
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped"


def test_exit_does_not_wait_for_the_export_interval_and_keeps_the_final_export() -> None:
    """`asyncwatch run` with a periodic exporter whose interval is an hour: the program exits
    (within the test's deadline) and its final export, with asyncwatch's task figures of the
    whole run, is written before it does."""
    program = textwrap.dedent(
        """
        import asyncio
        async def work(i):
            await asyncio.sleep(0)
        async def main():
            await asyncio.gather(*(work(i) for i in range(7)))
        asyncio.run(main())
        """
    )
    env = python_env(OTEL_METRIC_EXPORT_INTERVAL="3600000")
    result = subprocess.run(
        [
            ASYNCWATCH,
            "run",
            "--metrics-exporter",
            "console,prometheus",
            "--port",
            "0",
            "--",
            sys.executable,
            "-c",
            program,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    exported = json.loads(result.stdout)
    scopes = [
        scope
        for resource in exported["resource_metrics"]
        for scope in resource["scope_metrics"]
        if scope["scope"]["name"] == "asyncwatch"
    ]
    created = [m for s in scopes for m in s["metrics"] if m["name"] == "asyncwatch.task.created"]
    points = [p for m in created for p in m["data"]["data_points"]]
    work = [p for p in points if p["attributes"].get("code.function.name") == "__main__.work"]
    assert [p["value"] for p in work] == [7], points


def test_concurrent_first_scrapes_all_get_the_figures() -> None:
    """Eight scrapes arriving together at a deferred endpoint: one builds the pipeline, the
    others wait for it; every page carries asyncwatch's figures (none is served empty)."""
    code = short_program(3) + textwrap.dedent(
        """
        import threading, urllib.request
        start = threading.Barrier(8)
        pages = []
        def scrape():
            start.wait()
            pages.append(urllib.request.urlopen(watch.prometheus_url, timeout=30).read())
        threads = [threading.Thread(target=scrape) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        line = b'asyncwatch_task_created_total{code_function_name="__main__.work"} 3.0'
        print(len(pages), sum(line in page for page in pages))
        asyncwatch.uninstall()
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["8", "8"]


# what a default install() and a short program leave unloaded until something uses them
LAZY = (
    "uvloop",  # patched when the app imports it, never imported to be patched
    "asyncwatch.advisor._batch_model",
    "asyncwatch.advisor._limit_model",
    "asyncwatch.advisor._loop_model",
    "asyncwatch.advisor._pool_model",
    "asyncwatch.advisor._fit",
    "asyncwatch.advisor._recommendation",
    "asyncwatch.asgi._middleware",
    "asyncwatch.asgi._starlette",
    "opentelemetry.propagators",
    "importlib.abc",
    "wsgiref",  # the endpoint's HTTP server: built at the first connection
    "http.server",
    "email",
    "statistics",
    "decimal",
    "difflib",
    "tempfile",
    "sysconfig",
)


def test_default_install_leaves_the_lazy_parts_unloaded() -> None:
    """install() with the defaults (endpoint, watchdog, deadlock detector, advisor) inside a
    running loop, and a short program, load none of the parts that wait for first use."""
    code = textwrap.dedent(
        """
        import asyncio, json, sys
        import asyncwatch
        async def work(i):
            await asyncio.sleep(0)
        async def main():
            asyncwatch.install(prometheus_port=0)
            await asyncio.gather(*(work(i) for i in range(5)))
        asyncio.run(main())
        print(json.dumps(sorted(sys.modules)))
        asyncwatch.uninstall()
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert [m for m in loaded if m.startswith(LAZY)] == []
    assert "asyncwatch.advisor._advisor" in loaded  # the advisor is on, only its models wait


def test_lazy_parts_work_on_first_use() -> None:
    """After a default install(): uvloop imported later has its loops observed and its
    run_in_executor measured (restored by uninstall), the advisor's models load for advise(),
    and the ASGI middleware imported later knows the running Watch."""
    pytest.importorskip("uvloop")
    code = textwrap.dedent(
        """
        import asyncio, sys
        import asyncwatch
        watch = asyncwatch.install(metrics_exporters="none")
        import types, uvloop
        def ours(name):  # asyncwatch's patches are Python functions; uvloop's methods are not
            return isinstance(uvloop.Loop.__dict__.get(name), types.FunctionType)
        assert ours("run_in_executor") and ours("__init__")
        async def work():
            await asyncio.sleep(0)
        async def main():
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            await asyncio.gather(*(asyncio.create_task(work()) for _ in range(3)))
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(1) as pool:
                await asyncio.get_running_loop().run_in_executor(pool, int)
        uvloop.run(main())
        created = watch.stats().coroutines["__main__.work"].created
        executors = watch.advisor.executors.executors()
        recs = asyncwatch.advise()
        assert all(isinstance(r, asyncwatch.Recommendation) for r in recs), recs
        from asyncwatch import AsyncWatchMiddleware
        from asyncwatch.asgi import _middleware
        assert _middleware._running is watch
        asyncwatch.uninstall()
        restored = not ours("run_in_executor") and not ours("__init__")
        hooks = [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "PostImportHook"]
        print(created, len(executors), restored, hooks)
        """
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["3", "1", "True", "[]"]
