"""The task path's two twins, compiled (``tasks/_fastpath.c``) and pure Python
(``tasks/_purepath.py``), do the same thing.

Each case below runs in a fresh interpreter twice, once on each twin
(``ASYNCWATCH_NO_EXTENSIONS=1`` forces the Python one), and both runs must give the expected
figures: the counts per outcome, asyncio's "exception was never retrieved" report, task
finalizers and freed frames, chained factories with their keyword arguments, names and
contexts, and a fault of asyncwatch's own that must not reach the app. Where the accelerator
is not built (no compiler), the compiled half is skipped, and ``./scripts/test`` builds it with
``ASYNCWATCH_BUILD_EXTENSIONS=required``, so there it always runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncwatch.tasks import _path

from .conftest import python_env

BUILT = importlib.util.find_spec("asyncwatch.tasks._fastpath") is not None

TWINS = [
    pytest.param("compiled", marks=pytest.mark.skipif(not BUILT, reason="not built here")),
    "python",
]

CHILD = r"""
import asyncio, contextvars, gc, json, sys, weakref
import asyncwatch
from asyncwatch import Config
from asyncwatch.tasks import ACCELERATOR

out = {"path": ACCELERATOR}
w = asyncwatch.install(Config(metrics_exporters=("none",), timed_per_s=0.001,
                              loop_watch=False, deadlock_detection=False, advisor=False))

async def ok():
    await asyncio.sleep(0)
    return 1

async def bad():
    await asyncio.sleep(0)
    raise ValueError("boom")

async def forever():
    await asyncio.Event().wait()

async def lost():
    raise KeyError("nobody awaits me")

async def named():
    return asyncio.current_task().get_name()

VAR = contextvars.ContextVar("v", default="outside")

async def reads_var():
    return VAR.get()

async def broken():
    return "still ran"

def stat(name):
    s = asyncwatch.stats().coroutines[f"__main__.{name}"]
    return [s.created, s.in_flight, s.peak, s.ok, s.errors, s.cancelled, dict(s.errors_by_type)]

def untimed(hook, fn):
    # Register the coroutine and keep its tasks off the timed path: the hot path is under test.
    coro = fn()
    stats = hook._lookup(coro)
    coro.close()
    stats.next_at = stats.sample_at = 10**9
    return stats

async def main():
    loop = asyncio.get_running_loop()
    hook = w.tasks.hook_of(loop)
    every = [untimed(hook, fn) for fn in (ok, bad, forever, lost, named, reads_var, broken)]
    handled = []
    loop.set_exception_handler(lambda loop, ctx: handled.append(ctx["message"]))

    # outcomes
    assert sum(await asyncio.gather(*(asyncio.create_task(ok()) for _ in range(5)))) == 5
    for _ in range(3):
        try:
            await asyncio.create_task(bad())
        except ValueError:
            pass
    waiting = [asyncio.create_task(forever()) for _ in range(2)]
    await asyncio.sleep(0)
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)  # let the done-callbacks run
    out["ok"], out["bad"], out["forever"] = stat("ok"), stat("bad"), stat("forever")

    # an exception nobody retrieves is still reported by asyncio, and the task is freed
    t = asyncio.create_task(lost())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    freed = []
    weakref.finalize(t, freed.append, True)
    frame_ref = weakref.ref(t.get_coro())
    del t
    gc.collect()
    await asyncio.sleep(0)
    out["never_retrieved"] = [m for m in handled if "never retrieved" in m]
    out["freed"] = freed == [True] and frame_ref() is None
    out["lost"] = stat("lost")

    # names and contexts pass through
    out["name"] = await asyncio.create_task(named(), name="chosen")
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "inside")
    out["context"] = await asyncio.create_task(reads_var(), context=ctx)

    # a factory the app sets later is chained, with its keyword arguments
    seen = []
    def app_factory(loop, coro, **kwargs):
        seen.append(sorted(kwargs))
        return asyncio.Task(coro, loop=loop, **kwargs)
    loop.set_task_factory(app_factory)
    out["chained"] = await asyncio.create_task(reads_var(), context=ctx)
    await asyncio.create_task(ok())
    out["chained_kwargs"] = seen
    out["factory_is_app's"] = loop.get_task_factory() is app_factory
    loop.set_task_factory(None)

    # a fault of asyncwatch's own: the app still gets its task, the fault is counted
    class BrokenRequest:  # what the ASGI middleware puts in its ContextVar, failing
        def done_callback(self, stats):
            raise RuntimeError("asyncwatch's own bug")
    request = contextvars.ContextVar("request", default=None)
    request.set(BrokenRequest())
    hook.requests, kept = request, hook.requests
    out["broken"] = await asyncio.create_task(broken())
    hook.requests = kept
    out["faults"] = dict(w.faults.counts)
    out["timed"] = sum(s.duration.total + s.delay.total for s in every)

asyncio.run(main())
print(json.dumps(out))
"""


def _run(twin: str) -> dict[str, object]:
    env = python_env()
    env.pop("ASYNCWATCH_NO_EXTENSIONS", None)
    if twin == "python":
        env["ASYNCWATCH_NO_EXTENSIONS"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("twin", TWINS)
def test_both_twins_observe_tasks_alike(twin: str) -> None:
    out = _run(twin)
    assert str(out["path"]).startswith("compiled" if twin == "compiled" else "pure Python")
    # created, in flight, peak, ok, errors, cancelled, by type
    assert out["ok"] == [5, 0, 5, 5, 0, 0, {}]
    assert out["bad"] == [3, 0, 1, 0, 3, 0, {"ValueError": 3}]
    assert out["forever"] == [2, 0, 2, 0, 0, 2, {}]
    assert out["lost"] == [1, 0, 1, 0, 1, 0, {"KeyError": 1}]
    assert out["never_retrieved"] == ["Task exception was never retrieved"]
    assert out["freed"] is True
    assert out["name"] == "chosen"
    assert out["context"] == "inside"
    assert out["chained"] == "inside"
    assert out["chained_kwargs"] == [["context"], []]
    assert out["factory_is_app's"] is True
    assert out["broken"] == "still ran"
    assert out["faults"] == {"task_factory": 1}
    assert out["timed"] == 0  # every task took the hot path


def test_the_twins_agree() -> None:
    if not BUILT:
        pytest.skip("the accelerator is not built here")
    compiled, python = _run("compiled"), _run("python")
    del compiled["path"], python["path"]
    assert compiled == python


def test_the_compiled_twin_is_used_where_it_is_built() -> None:
    compiled = BUILT and os.environ.get("ASYNCWATCH_NO_EXTENSIONS", "") in ("", "0")
    assert _path.ACCELERATOR.startswith("compiled" if compiled else "pure Python")
    assert _path.HookCore.__module__.endswith("_fastpath" if compiled else "_purepath")


def test_the_compiled_http_core_is_used_where_it_is_built() -> None:
    from asyncwatch.asgi import _exchange

    built = importlib.util.find_spec("asyncwatch.asgi._fastexchange") is not None
    compiled = built and os.environ.get("ASYNCWATCH_NO_EXTENSIONS", "") in ("", "0")
    assert _exchange.ACCELERATOR.startswith("compiled" if compiled else "pure Python")
    assert _exchange.HttpCore.__module__.endswith("_fastexchange" if compiled else
                                                  "_pureexchange")


def test_asyncwatch_config_names_the_task_and_http_paths() -> None:
    cli = Path(sys.executable).parent / "asyncwatch"
    compiled = "compiled" if BUILT else "pure Python"
    for forced, expected in ((False, compiled), (True, "pure Python (ASYNCWATCH_NO_EXTENSIONS)")):
        env = python_env()
        env.pop("ASYNCWATCH_NO_EXTENSIONS", None)
        if forced:
            env["ASYNCWATCH_NO_EXTENSIONS"] = "1"
        result = subprocess.run(
            [str(cli), "config"], env=env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        for path in ("task path", "HTTP path"):
            (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith(f"{path}:")]
            assert line.startswith(f"{path}: {expected}")
