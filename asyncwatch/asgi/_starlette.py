"""Starlette and FastAPI without code change, while asyncwatch is installed.

* ``build_middleware_stack`` of ``Starlette`` and ``FastAPI`` is wrapped so the stack an app
  builds (on its first call) gets ``AsyncWatchMiddleware`` as its outermost layer, unless the
  app added the middleware itself (``asgi_auto``). Outermost means every request is seen,
  including those Starlette's error middleware answers; inside FastAPI, it runs within
  FastAPI's own telemetry, which it detects so nothing is counted twice.
* One layer per request: an app wrapped from outside (``AsyncWatchMiddleware(app)``, also
  through other middleware) is remembered (weakly) and gets no layer of asyncwatch's own, and
  one already built into its stack is taken out; an app whose stack is built while an outer
  layer observes the request it serves (a mounted sub-app, built on its first request) gets
  none either, since the outer layer already sees all of its requests.
* ``BackgroundTask.__call__`` marks the current request as running background work, so the
  time after the response is reported as background time, not request time.

Modules not imported yet are patched as they are imported (a post-import hook on
``sys.meta_path``), so ``asyncwatch run -- uvicorn app:app`` works with asyncwatch installed
before the app exists. ``uninstall()`` removes the hook and restores each method, only where
asyncwatch's is still in place. Stacks already built keep their middleware, which passes
requests straight through once asyncwatch is uninstalled.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from .._core.aio import Patch
from .._core.faults import Faults

# Starlette apps wrapped from outside by an AsyncWatchMiddleware: no layer of our own inside.
_OUTSIDE: weakref.WeakSet[object] = weakref.WeakSet()
_MAX_WRAPPERS = 64  # middleware ``.app`` links followed at most, looking for the Starlette app


def wrapping_from_outside(app: Any) -> None:
    """``AsyncWatchMiddleware(app)`` is being made: the Starlette app under ``app`` (directly or
    through other middleware's ``.app``), if any, gets no layer of asyncwatch's own, and one
    asyncwatch added already is taken out of its built stack. Never raises."""
    try:
        module = sys.modules.get("starlette.applications")
        if module is None:  # not loaded: ``app`` is no Starlette app
            return
        for _ in range(_MAX_WRAPPERS):
            if app is None:
                return
            if isinstance(app, module.Starlette):
                break
            app = getattr(app, "app", None)
        else:
            return
        _OUTSIDE.add(app)
        stack = app.__dict__.get("middleware_stack")
        if getattr(stack, "auto", False) is True:
            from ._middleware import AsyncWatchMiddleware

            if isinstance(stack, AsyncWatchMiddleware):
                app.middleware_stack = stack.app
    except Exception:  # an odd object: it keeps whatever layers it has
        return


def _observed_already(app: object) -> bool:
    """``app`` builds its stack while serving a request an outer layer observes (it is mounted
    in an observed app, or wrapped from outside): that layer sees all of its requests."""
    if app in _OUTSIDE:
        return True
    from ._exchange import REQUEST

    outer = REQUEST.get()
    # None once the outer request is over and released (a task it left behind builds the app)
    scope = getattr(outer, "scope", None)
    return isinstance(scope, dict) and scope.get("app") is app


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs a callback right after one of the named modules is executed."""

    def __init__(self, callbacks: dict[str, Callable[[ModuleType], None]], faults: Faults) -> None:
        self.callbacks = callbacks
        self.faults = faults

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original = getattr(loader, "exec_module", None)
        if original is None:
            return None  # a legacy loader: import it normally, unpatched
        faults = self.faults

        def exec_module(module: ModuleType) -> None:
            original(module)
            if module.__name__ == fullname:
                try:
                    callback(module)
                except Exception as exc:
                    faults.report("asgi_patch", exc)

        loader.exec_module = exec_module  # type: ignore[method-assign,union-attr,unused-ignore]
        return spec


class StarlettePatches:
    """Installs and removes the patches described in the module docstring."""

    def __init__(self, faults: Faults, *, auto_add: bool) -> None:
        self.faults = faults
        self.auto_add = auto_add
        self.active = False
        self._patches: list[Patch] = []
        self._hook: _PostImportHook | None = None

    def install(self) -> None:
        """Patch what is imported; hook the imports of the rest. Idempotent."""
        if self.active:
            return
        self.active = True
        targets: dict[str, Callable[[ModuleType], None]] = {
            "starlette.background": self._background
        }
        if self.auto_add:
            targets["starlette.applications"] = lambda m: self._stack(m.Starlette)
            targets["fastapi.applications"] = lambda m: self._stack(m.FastAPI)
        waiting = {}
        for name, patch in targets.items():
            module = sys.modules.get(name)
            if module is not None:
                patch(module)
            else:
                waiting[name] = patch
        if waiting:
            self._hook = _PostImportHook(waiting, self.faults)
            sys.meta_path.insert(0, self._hook)

    def uninstall(self) -> None:
        """Remove the import hook and every patch still ours. Idempotent."""
        self.active = False
        if self._hook is not None:
            if self._hook in sys.meta_path:
                sys.meta_path.remove(self._hook)
            self._hook = None
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()

    def _stack(self, cls: type) -> None:
        original = cls.__dict__.get("build_middleware_stack")
        if original is None or getattr(original, "_asyncwatch", False):
            return
        patches = self

        def build_middleware_stack(app: Any) -> Any:
            stack = original(app)
            if not patches.active:
                return stack
            try:
                from ._middleware import AsyncWatchMiddleware

                added = any(
                    getattr(m, "cls", None) is AsyncWatchMiddleware
                    for m in getattr(app, "user_middleware", ())
                )
                if (
                    not added
                    and not isinstance(stack, AsyncWatchMiddleware)
                    and not _observed_already(app)
                ):
                    stack = AsyncWatchMiddleware(stack)
                    stack.auto = True
            except Exception as exc:
                patches.faults.report("asgi_auto", exc)
            return stack

        build_middleware_stack._asyncwatch = True  # type: ignore[attr-defined]
        build_middleware_stack.__wrapped__ = original  # type: ignore[attr-defined]
        build_middleware_stack.__qualname__ = f"{cls.__qualname__}.build_middleware_stack"
        build_middleware_stack.__doc__ = original.__doc__
        self._patches.append(Patch(cls, "build_middleware_stack", build_middleware_stack))

    def _background(self, module: ModuleType) -> None:
        cls = module.BackgroundTask
        original = cls.__dict__.get("__call__")
        if original is None or getattr(original, "_asyncwatch", False):
            return
        from ._exchange import REQUEST, HttpExchange

        async def __call__(task: asyncio.Task[Any], *args: Any, **kwargs: Any) -> Any:
            request = REQUEST.get()
            if request is not None and request.__class__ is HttpExchange:
                request.background = True
                request.plain = False
            return await original(task, *args, **kwargs)

        __call__._asyncwatch = True  # type: ignore[attr-defined]
        __call__.__wrapped__ = original  # type: ignore[attr-defined]
        __call__.__qualname__ = f"{cls.__qualname__}.__call__"
        self._patches.append(Patch(cls, "__call__", __call__))
