"""asyncwatch's console commands, beside aiomonitor's ``ps``/``where``/``cancel``.

Each command is a click command named ``do_<name>`` whose docstring is its help. Nothing is
registered at import: ``register(group)`` adds them to aiomonitor's ``monitor_cli`` group when
the console starts. They work outside aiomonitor too (click's ``CliRunner`` in the tests, or
``python -m``-style use): output goes through ``click.echo``, which aiomonitor routes to the
telnet connection.

The ``http`` command reads a small interface the ASGI middleware provides: a callable
``watch.http_routes()`` returning one mapping per (method, route) with ``route``, ``method``,
``requests``, ``errors``, ``in_flight`` and ``p50``/``p95``/``p99`` (seconds, or None).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import click

from ._render import rate_of, render_finding, render_http, render_memory, render_top

_TOP_SORTS = ("rate", "created", "in_flight", "peak", "errors", "cancelled", "p50", "p95", "p99",
              "name")
_HTTP_SORTS = ("rate", "requests", "errors", "in_flight", "p50", "p95", "p99", "route")


# ---------------------------------------------------------------- plumbing


def _watch(ctx: click.Context) -> Any:
    """The Watch the console was started by (the monitor's ``watch``), or None."""
    return getattr(ctx.obj, "watch", None)


def _done_event() -> asyncio.Event | None:
    try:
        from aiomonitor.context import command_done
    except ImportError:  # pragma: no cover - the console extra is missing
        return None
    event: asyncio.Event | None = command_done.get(None)
    return event


def _ui_loop(ctx: click.Context) -> asyncio.AbstractEventLoop | None:
    loop = getattr(ctx.obj, "_ui_loop", None)
    return loop if isinstance(loop, asyncio.AbstractEventLoop) and loop.is_running() else None


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body (plain or async) and tell aiomonitor when it is done.

    aiomonitor's prompt waits for its ``command_done`` event after each command; an async body
    runs as a task on the console's own loop (never the app's), so a command that waits
    (``top --interval``, ``profile 5``) leaves the console answering.
    """

    @functools.wraps(fn)
    def run(ctx: click.Context, /, *args: Any, **kwargs: Any) -> None:
        done = _done_event()
        try:
            result = fn(ctx, *args, **kwargs)
        except Exception as exc:
            click.echo(f"error: {exc}")
            result = None
        if not asyncio.iscoroutine(result):
            if done is not None:
                done.set()
            return
        loop = _ui_loop(ctx)
        if loop is None:  # not inside aiomonitor (tests, scripts): run it here
            try:
                asyncio.run(result)
            except Exception as exc:
                click.echo(f"error: {exc}")
            if done is not None:
                done.set()
            return
        if done is not None:
            done.clear()

        async def body() -> None:
            try:
                await result
            except Exception as exc:
                click.echo(f"error: {exc}")
            finally:
                if done is not None:
                    done.set()

        task = loop.create_task(body())
        tasks = getattr(ctx.obj, "_termui_tasks", None)
        if tasks is not None:
            tasks.add(task)  # aiomonitor cancels these when the session or console closes

    return run


def _help(cmd: Callable[..., Any]) -> Callable[..., Any]:
    """``--help`` that also releases aiomonitor's prompt (click's own would leave it waiting)."""

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if not value:
            return
        click.echo(ctx.get_help())
        done = _done_event()
        if done is not None:
            done.set()
        ctx.exit()

    return click.option(
        "--help", is_flag=True, expose_value=False, is_eager=True, callback=show,
        help="Show this message.",
    )(cmd)


def _no_watch() -> None:
    click.echo("asyncwatch is not installed in this process (asyncwatch.install())")


# ---------------------------------------------------------------- top


@click.command(name="top")
@click.option("-s", "--sort", type=click.Choice(_TOP_SORTS), default="rate", show_default=True,
              help="column to sort by, highest first")
@click.option("-n", "--limit", type=click.IntRange(1, 500), default=20, show_default=True,
              help="rows to show")
@click.option("-i", "--interval", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="seconds over which created/s is measured (0: no rate, instant)")
@click.option("-r", "--repeat", type=click.IntRange(1, 600), default=1, show_default=True,
              help="refresh this many times (live view)")
@_help
@click.pass_context
@_command
def do_top(ctx: click.Context, sort: str, limit: int, interval: float, repeat: int) -> Any:
    """Live top view of coroutines: in flight, created/s, duration p50/p95/p99, errors."""
    watch = _watch(ctx)
    if watch is None:
        return _no_watch()

    async def live() -> None:
        before, t0 = watch.stats(), time.monotonic()
        for i in range(repeat):
            if interval > 0:
                await asyncio.sleep(interval)
            now, t1 = watch.stats(), time.monotonic()
            rates = rate_of(before if interval > 0 else None, now, t1 - t0)
            if repeat > 1:
                click.echo("\x1b[2J\x1b[H" + f"refresh {i + 1}/{repeat}")
            click.echo(render_top(now, rates, sort=sort, limit=limit))
            before, t0 = now, t1

    return live()


# ---------------------------------------------------------------- http


@click.command(name="http")
@click.option("-s", "--sort", type=click.Choice(_HTTP_SORTS), default="rate", show_default=True,
              help="column to sort by, highest first")
@click.option("-n", "--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("-i", "--interval", type=click.FloatRange(0, 60), default=1.0, show_default=True,
              help="seconds over which req/s is measured (0: no rate)")
@_help
@click.pass_context
@_command
def do_http(ctx: click.Context, sort: str, limit: int, interval: float) -> Any:
    """HTTP routes: requests/s, errors, latency p50/p95/p99, requests in flight."""
    watch = _watch(ctx)
    source = getattr(watch, "http_routes", None) if watch is not None else None
    if not callable(source):
        click.echo("no HTTP middleware installed (add asyncwatch.AsyncWatchMiddleware)")
        return None

    def reading() -> dict[tuple[str, str], Mapping[str, Any]]:
        return {(str(r.get("method", "")), str(r.get("route", ""))): r for r in source()}

    async def measure() -> None:
        before, t0 = reading(), time.monotonic()
        if interval > 0:
            await asyncio.sleep(interval)
        now, dt = reading(), time.monotonic() - t0
        rates: dict[tuple[str, str], float | None] = {}
        for k, r in now.items():
            old = before.get(k, {}).get("requests", 0) or 0
            rates[k] = (r.get("requests", 0) - old) / dt if interval > 0 else None
        if not now:
            click.echo(
                "no HTTP requests seen yet (is asyncwatch.AsyncWatchMiddleware in the app?)"
            )
            return
        click.echo(render_http(now.values(), rates, sort=sort, limit=limit))

    return measure()


# ---------------------------------------------------------------- findings


@click.command(name="findings")
@click.option("-k", "--kind", default=None, help="only this kind (blocked_loop, deadlock, ...)")
@click.option("-n", "--limit", type=click.IntRange(1, 200), default=10, show_default=True,
              help="most recent findings to show")
@click.option("--stack/--no-stack", default=True, show_default=True,
              help="show stacks and await chains")
@_help
@click.pass_context
@_command
def do_findings(ctx: click.Context, kind: str | None, limit: int, stack: bool) -> None:
    """Recent findings: blocked loops (culprit line, stack), deadlocks, stuck tasks."""
    watch = _watch(ctx)
    if watch is None:
        return _no_watch()
    found = watch.findings.list(kind)
    totals = dict(watch.findings.totals)
    if not found:
        click.echo(f"no findings{f' of kind {kind}' if kind else ''} so far")
        return None
    counts = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
    click.echo(f"{len(found)} sites kept ({counts} occurrences seen); newest last")
    for finding in found[-limit:]:
        click.echo(render_finding(finding, stack=stack))
    return None


# ---------------------------------------------------------------- advice


@click.command(name="advice")
@click.option("-b", "--brief", is_flag=True, help="leave out the evidence")
@_help
@click.pass_context
@_command
def do_advice(ctx: click.Context, brief: bool) -> None:
    """The advisor's recommendations (workers, concurrency limits, batch sizes, processes)."""
    watch = _watch(ctx)
    if watch is None:
        return _no_watch()
    text = watch.advice_text(evidence=not brief)
    click.echo("advisor off (ASYNCWATCH_ADVISOR=0)" if text is None else text)
    return None


# ---------------------------------------------------------------- memory


@click.command(name="memory")
@click.option("-n", "--limit", type=click.IntRange(1, 500), default=15, show_default=True)
@_help
@click.pass_context
@_command
def do_memory(ctx: click.Context, limit: int) -> None:
    """Memory: RSS, USS, GC counts, and live bytes per coroutine if attribution is on."""
    watch = _watch(ctx)
    if watch is None:
        return _no_watch()
    click.echo(
        render_memory(watch.stats(), attribution=watch.config.memory_attribution, limit=limit)
    )
    return None


# ---------------------------------------------------------------- profile


@click.command(name="profile")
@click.argument("seconds", type=click.FloatRange(0.01, 3600), default=5.0)
@click.option("-n", "--limit", type=click.IntRange(1, 200), default=15, show_default=True,
              help="rows per table")
@_help
@click.pass_context
@_command
def do_profile(ctx: click.Context, seconds: float, limit: int) -> Any:
    """Profile the app for SECONDS (yappi, wall clock, coroutine-aware) and show the top."""
    watch = _watch(ctx)
    if watch is None:
        return _no_watch()
    try:
        session = watch.start_profile(seconds, top=limit)
    except (RuntimeError, ValueError, ImportError) as exc:  # ProfilerBusy is a RuntimeError
        click.echo(f"profile refused: {exc}")
        return None
    click.echo(f"profiling for {seconds:g}s ...")

    async def wait() -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            report = session.stop()
        click.echo(report.format(limit))

    return wait()


COMMANDS = (do_top, do_http, do_findings, do_advice, do_memory, do_profile)


def register(group: click.Group) -> None:
    """Add asyncwatch's commands to aiomonitor's command group. Idempotent."""
    for cmd in COMMANDS:
        if cmd.name is not None and group.commands.get(cmd.name) is not cmd:
            group.add_command(cmd)
