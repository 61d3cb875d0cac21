"""The live console over a real telnet connection: asyncwatch's commands against the app's state."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner

import asyncwatch
from asyncwatch import Config, ConfigError, Finding
from asyncwatch.console._commands import do_http
from asyncwatch.console._render import render_top
from tests.conftest import free_port, marked_line, python_env, wait_for
from tests.console_client import AppThread, run_commands

HERE = __name__
PARKED = 7  # tasks of `parked` the app keeps in flight


async def parked(release: asyncio.Event) -> None:
    await release.wait()


async def ticker() -> None:
    await asyncio.sleep(0)


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


async def hot() -> None:
    burn(30_000)


async def app_main(app: AppThread) -> None:
    release = asyncio.Event()
    tasks = [asyncio.create_task(parked(release)) for _ in range(PARKED)]
    app.ready.set()
    while not app.stop.is_set():
        await asyncio.gather(ticker(), ticker(), hot())
        await asyncio.sleep(0.005)
    release.set()
    await asyncio.gather(*tasks)


def ports() -> dict[str, int]:
    return {
        "console_port": free_port(),
        "console_webui_port": free_port(),
        "console_repl_port": free_port(),
    }


@pytest.fixture
def console() -> Iterator[dict[str, int]]:
    """asyncwatch with the console on free loopback ports (attached when the app's loop starts)."""
    chosen = ports()
    asyncwatch.install(console=True, metrics_exporters=("none",), **chosen)
    yield chosen
    asyncwatch.uninstall(timeout_s=2)


def test_commands_print_the_apps_real_state(console: dict[str, int]) -> None:
    """top, memory, findings, advice, http, ps and help over telnet match what the app holds."""
    with AppThread(app_main):
        watch = asyncwatch.current()
        assert watch is not None
        watch.findings.add(
            Finding(kind="stuck_task", summary="parked waits on an Event nobody sets")
        )
        top, memory, findings, advice, http, ps, help_ = run_commands(
            console["console_port"],
            ["top -i 0.2 -s name -n 50", "memory", "findings", "advice", "http", "ps", "help"],
        )
    row = next(line for line in top.splitlines() if f"{HERE}.parked" in line)
    flight, rate, created = row.split()[1:4]
    assert (int(flight), int(created)) == (PARKED, PARKED)
    assert rate == "0.0"  # none created during the interval
    ticker_row = next(line for line in top.splitlines() if f"{HERE}.ticker" in line)
    assert float(ticker_row.split()[2]) > 0  # created continuously: a real rate

    rss = float(re.search(r"rss ([\d.]+) MiB", memory).group(1)) * 1024 * 1024  # type: ignore[union-attr]
    real = psutil.Process().memory_info().rss
    assert 0.5 * real < rss < 1.5 * real
    assert "gc.garbage (uncollectable): 0" in memory
    assert "per-coroutine attribution off" in memory

    assert "stuck_task" in findings
    assert "parked waits on an Event nobody sets" in findings
    assert "no recommendations" in advice  # a healthy app: nothing to change
    assert "no HTTP requests seen yet" in http
    assert ps.count("parked()") == PARKED
    for name in ("top", "http", "findings", "advice", "memory", "profile", "ps", "where"):
        assert re.search(rf"^\s+{name}\b", help_, re.M), name


def test_profile_command_ranks_the_hot_coroutine_first(console: dict[str, int]) -> None:
    """`profile 1` over telnet puts the coroutine that burns the loop at the top."""
    with AppThread(app_main):
        (out,) = run_commands(console["console_port"], ["profile 1 -n 5"], timeout=60)
    lines = out.splitlines()
    first = lines[lines.index(next(x for x in lines if x.startswith("coroutine "))) + 1]
    assert first.split()[0] == f"{HERE}.hot", out
    assert "leak guard on" in out
    assert re.search(r"pstats \S+\.pstats", out)


def line_of(marker: str) -> int:
    """The line of this file that carries ``# <marker>``."""
    return marked_line(__file__, marker)


async def troubled_app(app: AppThread) -> None:
    """An app with a real lock-order deadlock between two tasks, whose loop blocks once."""
    first_lock, second_lock = asyncio.Lock(), asyncio.Lock()
    first_holds, second_holds = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with first_lock:
            first_holds.set()
            await second_holds.wait()
            async with second_lock:  # first waits
                pass

    async def second() -> None:
        async with second_lock:
            second_holds.set()
            await first_holds.wait()
            async with first_lock:  # second waits
                pass

    tasks = [asyncio.create_task(first(), name="first"),
             asyncio.create_task(second(), name="second")]
    await asyncio.sleep(0)
    time.sleep(0.5)  # blocks the loop
    app.ready.set()
    await app.until_stopped()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_findings_of_the_real_detectors_over_telnet() -> None:
    """A real blocked loop and a real deadlock, as `findings` shows them over telnet: the
    culprit line, the tasks of the cycle and where each one waits."""
    asyncwatch.install(console=True, metrics_exporters=("none",), block_threshold_s=0.1,
                       deadlock_interval_s=0.1, **ports())
    try:
        watch = asyncwatch.current()
        assert watch is not None
        port = watch.config.console_port
        with AppThread(troubled_app):
            wait_for(lambda: [f for f in watch.findings.list("blocked_loop") if not f.ongoing]
                     and watch.findings.list("deadlock"), what="a block and a deadlock")
            blocked, deadlock = run_commands(
                port, ["findings -k blocked_loop", "findings -k deadlock"]
            )
    finally:
        asyncwatch.uninstall(timeout_s=2)
    this = Path(__file__).resolve()
    assert f"culprit: {this}:{line_of('blocks the loop')} in troubled_app" in blocked, blocked
    assert "time.sleep(0.5)" in blocked
    assert "coroutine: tests.console_client.AppThread._main" in blocked  # the task running it
    assert "deadlock" in deadlock and "first" in deadlock and "second" in deadlock, deadlock
    for marker in ("first waits", "second waits"):
        assert f"{this}:{line_of(marker)} in troubled_app.<locals>." in deadlock, deadlock
    assert "await chains (outermost first):" in deadlock
    first_chain = "task 'first' (tests.test_console.troubled_app.<locals>.first) waits for Lock"
    assert first_chain in deadlock
    assert deadlock.count("held by 'second'") >= 2  # in the explanation, the chain, the locks


def test_http_command_reads_the_middleware_interface() -> None:
    """With a source of route figures, `http` shows rate, errors, percentiles, in flight."""
    counts = iter([10, 30])

    class Watch:
        def http_routes(self) -> list[dict[str, Any]]:
            return [{"method": "GET", "route": "/items/{id}", "requests": next(counts),
                     "errors": 2, "in_flight": 3, "p50": 0.002, "p95": 0.010, "p99": 0.050}]

    obj = type("M", (), {"watch": Watch()})()
    out = CliRunner().invoke(do_http, ["-i", "0.05"], obj=obj).output
    row = next(line for line in out.splitlines() if "/items/{id}" in line)
    method, _route, rate, requests, errors, flight, p50, p95, p99 = row.split()
    assert (method, requests, errors, flight) == ("GET", "30", "2", "3")
    assert float(rate) > 0
    assert (p50, p95, p99) == ("2.0ms", "10.0ms", "50.0ms")


def _seconds(shown: str) -> float:
    """A duration as the console prints it (``830us``, ``2.5ms``, ``1.20s``), in seconds."""
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0)):
        if shown.endswith(unit):
            return float(shown.removesuffix(unit)) * scale
    raise AssertionError(f"not a duration: {shown!r}")


class ServedApp:
    """A Starlette app behind AsyncWatchMiddleware, served by uvicorn on the app's loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hold: asyncio.Event | None = None

    async def main(self, app: AppThread) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        self.hold = asyncio.Event()

        async def item(request: Request) -> Response:
            return JSONResponse({"id": request.path_params["item_id"]})

        async def broken(request: Request) -> Response:
            return Response("down", status_code=503)

        async def held(request: Request) -> Response:
            assert self.hold is not None
            await self.hold.wait()
            return Response("released")

        routes = [Route("/items/{item_id}", item), Route("/broken", broken), Route("/held", held)]
        asgi = asyncwatch.AsyncWatchMiddleware(Starlette(routes=routes))
        config = uvicorn.Config(asgi, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving  # raises why it could not start
            await asyncio.sleep(0.01)
        app.ready.set()
        await app.until_stopped()
        self.hold.set()
        server.should_exit = True
        await serving

    def release(self, app: AppThread) -> None:
        assert app.loop is not None and self.hold is not None
        app.loop.call_soon_threadsafe(self.hold.set)


def test_http_command_shows_a_served_apps_routes(console: dict[str, int]) -> None:
    """`http` over telnet: per-route requests, errors, in-flight and percentiles of real traffic."""
    import httpx

    served = ServedApp()
    with AppThread(served.main) as app, httpx.Client(
        base_url=f"http://127.0.0.1:{served.port}", timeout=30
    ) as client:
        for i in range(5):
            assert client.get(f"/items/{i}").json() == {"id": str(i)}
        for _ in range(2):
            assert client.get("/broken").status_code == 503
        assert client.get("/nowhere").status_code == 404
        answers: list[str] = []
        waiter = threading.Thread(target=lambda: answers.append(client.get("/held").text))
        waiter.start()
        watch = asyncwatch.current()
        assert watch is not None

        def held_in_flight() -> bool:
            return any(r["route"] == "/held" and r["in_flight"] == 1 for r in watch.http_routes())

        wait_for(held_in_flight, what="/held in flight")
        try:
            (out,) = run_commands(console["console_port"], ["http -i 0.2 -s route"])
        finally:
            served.release(app)
            waiter.join(30)
        assert answers == ["released"]
    rows, order = {}, []
    for line in out.splitlines()[2:]:
        method, *middle, _rate, requests, errors, flight, p50, _p95, p99 = line.split()
        order.append(" ".join(middle))
        rows[" ".join(middle) or "-"] = (method, int(requests), int(errors), int(flight), p50, p99)
    assert rows["/items/{item_id}"][:4] == ("GET", 5, 0, 0)
    assert rows["/broken"][:4] == ("GET", 2, 2, 0)
    assert rows["/held"][:4] == ("GET", 0, 0, 1)
    assert rows["/held"][4:] == ("-", "-")  # nothing finished there yet: no percentiles
    assert rows["-"][:4] == ("GET", 1, 0, 0)  # the 404 matched no route
    p50, p99 = (_seconds(v) for v in rows["/items/{item_id}"][4:])
    assert 0 < p50 <= p99
    assert order == sorted(order)  # -s route


def test_route_percentiles_interpolate_inside_the_exported_buckets() -> None:
    """p50/p99 of the route table: linear inside a bucket, clamped to the observed min/max."""
    from asyncwatch.asgi._http import BoundHist

    hist = BoundHist((0.005, 0.01, 0.025))
    for value in (0.006, 0.007, 0.008, 0.009, 0.02):
        hist.add(value)
    assert hist.quantile(0.5) == pytest.approx(0.006 + 0.004 * 2.5 / 4)
    assert hist.quantile(0.99) == pytest.approx(0.01 + 0.01 * 0.95)
    assert hist.quantile(1.0) == pytest.approx(0.02)  # never above the largest seen
    assert BoundHist((1.0,)).quantile(0.5) is None


def test_top_sorts_by_the_chosen_column() -> None:
    """`top -s p99` orders rows by p99 duration, highest first."""
    stats = asyncwatch.Stats(coroutines={
        name: asyncwatch.CoroutineStats(
            name, created, 0, 0, created, 0, 0, {},
            asyncwatch.Percentiles(p99, p99, p99, p99, created),
            asyncwatch.Percentiles(None, None, None, None, 0),
        )
        for name, created, p99 in (("a.fast", 100, 0.001), ("a.slow", 5, 0.9), ("a.mid", 50, 0.1))
    })
    out = render_top(stats, {}, sort="p99")
    order = [line.split()[0] for line in out.splitlines()[3:]]
    assert order == ["a.slow", "a.mid", "a.fast"]


def _block_until(release: threading.Event, entered: threading.Event) -> None:
    entered.set()
    release.wait(60)  # blocks the app's loop thread, like a blocking call would


def test_console_answers_while_the_loop_is_blocked(console: dict[str, int]) -> None:
    """With the app's loop stuck in a callback, the console still runs commands."""
    release, entered = threading.Event(), threading.Event()
    with AppThread(app_main) as app:
        assert app.loop is not None
        app.loop.call_soon_threadsafe(_block_until, release, entered)
        assert entered.wait(30)
        try:
            top, stack, ps = run_commands(
                console["console_port"], ["top -i 0 -s name -n 50", "stacktrace", "ps"]
            )
        finally:
            release.set()
    assert f"{HERE}.parked" in top
    assert "_block_until" in stack  # the loop thread is inside the blocking callback
    assert ps.count("parked()") == PARKED


def test_non_loopback_host_is_refused_without_opt_in() -> None:
    """console_host=0.0.0.0 fails with ConfigError naming the opt-in, by argument or variable."""
    with pytest.raises(ConfigError, match="console_allow_remote"):
        asyncwatch.install(console=True, console_host="0.0.0.0", metrics_exporters=("none",))
    with pytest.raises(ConfigError, match="ASYNCWATCH_CONSOLE_ALLOW_REMOTE"):
        Config.from_env({"ASYNCWATCH_CONSOLE": "1", "ASYNCWATCH_CONSOLE_HOST": "10.1.2.3"})
    assert Config(console=True, console_host="localhost").console_host == "localhost"
    assert asyncwatch.current() is None


def test_allow_remote_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """With the opt-in a non-loopback host is accepted, with a warning."""
    caplog.set_level(logging.WARNING, "asyncwatch")
    config = Config(console=True, console_host="0.0.0.0", console_allow_remote=True,
                    metrics_exporters=("none",), **ports())
    asyncwatch.install(config)  # no loop yet, so nothing listens before uninstall
    assert any("console_allow_remote" in r.getMessage() for r in caplog.records)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_repl_is_off_by_default(console: dict[str, int]) -> None:
    """The `console` command (Python REPL) is refused and its port never opens."""
    with AppThread(app_main):
        (out,) = run_commands(console["console_port"], ["console"])
        assert not _listening(console["console_repl_port"])
    assert "Python console is disabled" in out


def test_repl_runs_code_when_turned_on() -> None:
    """console_repl=True really opens aiomonitor's REPL: it evaluates code in the app."""
    chosen = ports()
    asyncwatch.install(console=True, console_repl=True, metrics_exporters=("none",), **chosen)
    with AppThread(app_main):
        out = repl_session(chosen["console_port"], "print(6 * 7)", "42")
    assert "42" in out


def repl_session(port: int, code: str, expected: str) -> str:
    """Open the REPL with `console`, send `code`, read until `expected` appears."""
    import time

    import telnetlib3

    from tests.console_client import PROMPT, clean

    async def session() -> str:
        reader, writer = await telnetlib3.open_connection("127.0.0.1", port, connect_minwait=0.05)
        text = ""
        deadline = time.monotonic() + 30

        async def until(marker: str) -> None:
            nonlocal text
            while marker not in clean(text):
                try:
                    text += await asyncio.wait_for(reader.read(65536),
                                                   deadline - time.monotonic())
                except TimeoutError:
                    raise AssertionError(
                        f"waited for {marker!r}; the console sent {text!r}"
                    ) from None

        await until(PROMPT)
        writer.write("console\r")
        await until("---\n>>> ")  # aioconsole's banner and prompt, once the proxy is up
        text = ""
        writer.write(code + "\r")
        await until(expected)
        result = clean(text)
        writer.write("exit()\r")
        await until(PROMPT)  # back in the monitor: the REPL server is closed again
        writer.close()
        return result

    return asyncio.run(session())


def test_task_tracing_coexists_with_the_task_hook() -> None:
    """With aiomonitor's task factory on, asyncwatch still counts and `ps` shows where tasks
    were created."""
    chosen = ports()
    asyncwatch.install(console=True, console_task_tracing=True, metrics_exporters=("none",),
                       **chosen)
    with AppThread(app_main):
        watch = asyncwatch.current()
        assert watch is not None
        wait_for(lambda: asyncwatch.stats()[f"{HERE}.ticker"].created > 20, what="tickers")
        (ps,) = run_commands(chosen["console_port"], ["ps"])
        hook = watch.tasks.hook_of(watch.console.loop)
        assert hook is not None
        assert hook.inner == watch.console.monitor._create_task
    assert asyncwatch.stats()[f"{HERE}.parked"].created == PARKED
    rows = [line for line in ps.splitlines() if "parked()" in line]
    assert len(rows) == PARKED, ps
    assert all("test_console.py:" in row for row in rows), ps  # aiomonitor's creation location


def test_tracing_is_refused_over_an_app_task_factory(caplog: pytest.LogCaptureFixture) -> None:
    """aiomonitor's factory would replace the app's: tracing stays off and the app's stays."""
    caplog.set_level(logging.WARNING, "asyncwatch")
    seen: list[Any] = []

    def app_factory(loop: Any, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        seen.append(coro)
        return asyncio.Task(coro, loop=loop, **kw)

    chosen = ports()

    async def main() -> None:
        # install() inside a running loop that already has the app's factory
        watch = asyncwatch.install(console=True, console_task_tracing=True,
                                   metrics_exporters=("none",), **chosen)
        assert watch.console.loop is asyncio.get_running_loop()
        await asyncio.create_task(ticker())

    loop = asyncio.new_event_loop()
    try:
        loop.set_task_factory(app_factory)
        loop.run_until_complete(main())
        assert loop.get_task_factory() is app_factory
    finally:
        asyncwatch.uninstall(timeout_s=2)
        loop.close()
    assert seen
    assert "console_task_tracing is off" in caplog.text
    assert asyncwatch.current() is None


def test_console_moves_to_the_next_loop_when_its_loop_closes(console: dict[str, int]) -> None:
    """asyncio.run(setup()) then asyncio.run(main()): the console ends up on main's loop."""
    watch = asyncwatch.current()
    assert watch is not None

    async def setup() -> None:
        await asyncio.sleep(0)

    asyncio.run(setup())
    first = watch.console.loop
    assert first is not None
    assert first.is_closed()
    with AppThread(app_main) as app:
        assert watch.console.loop is app.loop
        (ps,) = run_commands(console["console_port"], ["ps"])
    assert ps.count("parked()") == PARKED


def test_console_loop_is_not_counted(console: dict[str, int]) -> None:
    """The console's own loop and tasks stay out of asyncwatch's figures."""
    with AppThread(app_main):
        run_commands(console["console_port"], ["top -i 0"])
    names = set(asyncwatch.stats().coroutines)
    assert not any(n.startswith(("prompt_toolkit", "aiomonitor", "aiohttp")) for n in names), names


def test_run_console_flag_serves_an_unmodified_script(tmp_path: Path) -> None:
    """`asyncwatch run --console -- python app.py`: the console shows the script's tasks."""
    from tests.test_cli import APP, ASYNCWATCH

    script = tmp_path / "app.py"
    script.write_text(APP)
    chosen = ports()
    proc = subprocess.Popen(
        [ASYNCWATCH, "run", "--console", "--console-port", str(chosen["console_port"]),
         "--set", f"console_webui_port={chosen['console_webui_port']}",
         "--metrics-exporter", "none", "--", sys.executable, str(script)],
        env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        (top,) = run_commands(chosen["console_port"], ["top -i 0 -s name"])
    finally:
        _, err = proc.communicate("\n", timeout=30)
    assert proc.returncode == 0, err
    row = next(line for line in top.splitlines() if "__main__.work" in line)
    assert row.split()[3] == "25"  # created


async def _library_first_app(app: AppThread) -> None:
    # A library's long-lived coroutine starts first (like a server's serve loop), then the
    # app's own parked workers and a busy ticker.
    library = asyncio.create_task(asyncio.Event().wait())
    release = asyncio.Event()
    workers = [asyncio.create_task(parked(release)) for _ in range(4)]
    app.ready.set()
    while not app.stop.is_set():
        await asyncio.gather(ticker(), ticker())
        await asyncio.sleep(0.005)
    release.set()
    library.cancel()
    await asyncio.gather(library, *workers, return_exceptions=True)


def test_top_n_keeps_the_apps_own_coroutines(console: dict[str, int]) -> None:
    """Issue 14.9: `top -n 2` (sorted by created/s) shows the busy ticker and the app's 4
    parked workers, not the library coroutine that merely started first (rows at 0 created/s
    used to keep first-seen order)."""
    client = (  # from another process, as a user would: no telnet client tasks in the app
        "import sys; from tests.console_client import run_commands;"
        f"print(run_commands({console['console_port']}, ['top -n 2 -i 0.3'])[0])"
    )
    with AppThread(_library_first_app):
        done = subprocess.run(
            [sys.executable, "-c", client], cwd=Path(__file__).resolve().parent.parent,
            env=python_env(), capture_output=True, text=True, timeout=60, check=True,
        )
    top = done.stdout
    rows = [line.split()[0] for line in top.splitlines()[3:] if line.strip()]
    assert rows == [f"{HERE}.ticker", f"{HERE}.parked"], top
