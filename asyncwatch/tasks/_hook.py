"""The task-factory hook's installation: puts a ``LoopHook`` (``_path``) on every instrumented
loop and takes it off again.

How a loop gets instrumented:

* ``install()`` patches the constructors of ``asyncio.BaseEventLoop`` (every stdlib loop) and
  ``uvloop.Loop`` so each loop made afterwards gets a ``LoopHook`` as its task factory, and
  instruments the running loop (or the thread's current loop) at once. The constructor only
  sets the factory: everything that schedules on the loop (heartbeat, deadlock scans, load
  meter: ``on_loop``) starts when the loop first runs (``run_forever``, which every way of
  running a loop goes through), never while a subclass's ``__init__`` is still unfinished.
* ``close`` is patched too: a closed loop's figures are folded at once, and when a loop is
  collected unclosed its shard is retired by a finalizer. Nothing here holds a
  loop: the hooks are kept by weak key and reference the loop only weakly.
* ``set_task_factory``/``get_task_factory`` are patched on the same classes: a factory the app
  sets later becomes the hook's ``inner`` (chained, still observed), and ``get_task_factory``
  reports the app's own factory, never ours, so code that chains to "the previous factory"
  cannot loop back into us.
* ``uninstall()`` puts back every class attribute and every loop's factory, but only where ours
  is still in place (a later patch by someone else is left alone).

What the hook does with each task, and which tasks are timed, is in ``_path``.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from typing import Any

from .._core.aio import Patch, loop_classes
from .._core.faults import Faults
from ._path import LoopHook
from ._recorder import Recorder


def _renames_after_factory() -> bool:
    """Whether ``BaseEventLoop.create_task`` calls ``set_name(None)`` on a task its factory
    made when no name was given, naming it "None" (3.13.0-3.13.2, CPython gh-130033). Asked
    of the method itself, with a stand-in loop and task: no loop is made."""
    names: list[Any] = []

    class Stub:
        def set_name(self, name: Any) -> None:
            names.append(name)

    stub = Stub()
    stand_in = type("StandIn", (), {})()
    stand_in._check_closed = lambda: None
    stand_in._task_factory = lambda loop, coro, **kwargs: stub
    try:
        asyncio.BaseEventLoop.create_task(stand_in, None)  # type: ignore[arg-type]
    except Exception:
        return False
    return None in names



class TaskWatcher:
    """Installs ``LoopHook``s on loops; see the module docstring."""

    def __init__(
        self,
        recorder: Recorder,
        faults: Faults,
        *,
        tracer: Callable[[], Any],
        on_loop: Callable[[Any], None] | None = None,
        skip_thread: Callable[[], bool] | None = None,
    ) -> None:
        self.recorder = recorder
        self.faults = faults
        self.tracer = tracer
        self.active = False
        self._on_loop = on_loop
        # True on a thread whose new loops are asyncwatch's own (the console's): not hooked.
        self._skip_thread = skip_thread
        self._hooks: weakref.WeakKeyDictionary[Any, tuple[LoopHook, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._patches: list[Patch] = []
        # The original get/set_task_factory of each patched class, to restore loops with.
        self._originals: dict[type, tuple[Any, Any]] = {}
        self._loop_count = 0
        self.requests: contextvars.ContextVar[Any] | None = None
        self._spans: Any = None

    def spans(self) -> Any:
        """The ``TaskSpans`` for the tracer as it is now (imports OpenTelemetry's trace API
        on the first task span: a process without task spans never loads it)."""
        tracer = self.tracer()
        spans = self._spans
        if spans is None or spans.tracer is not tracer:
            from ._spans import TaskSpans

            spans = self._spans = TaskSpans(tracer)
        return spans

    def track_requests(self, var: contextvars.ContextVar[Any] | None) -> None:
        """Count tasks per request from now on (``var`` holds the current request), or stop."""
        self.requests = var
        for hook, _ in list(self._hooks.values()):
            if hook.active:
                hook.requests = var

    # ------------------------------------------------------------------ install / uninstall

    def install(self) -> None:
        """Patch loop classes and instrument the current thread's loop. Idempotent."""
        if not self._patches:
            self.active = True
            for cls in loop_classes():
                self._patch_class(cls)
        self.instrument_current()

    def instrument_current(self) -> None:
        """Instrument the running loop, or this thread's set-but-not-running loop."""
        loop = asyncio.events._get_running_loop()
        running = loop is not None
        if loop is None:
            # The policy as it stands: get_event_loop_policy() would create one, a change the
            # app (and CPython's asyncio tests, which check it) can see.
            policy = getattr(asyncio.events, "_event_loop_policy", None)
            local = getattr(policy, "_local", None)
            loop = getattr(local, "_loop", None)
        if loop is not None and not loop.is_closed():
            self.instrument(loop)
            if running:
                self.attach(loop)

    def switch_off(self) -> None:
        """Let every hook pass tasks straight through (after repeated internal errors)."""
        self.active = False
        for hook, _ in list(self._hooks.values()):
            hook.switch_off()

    def uninstall(self) -> None:
        """Restore every class attribute and loop factory that is still ours. Idempotent."""
        self.switch_off()
        patches, self._patches = self._patches, []
        for patch in reversed(patches):
            patch.undo()
        hooks, self._hooks = self._hooks, weakref.WeakKeyDictionary()
        for loop, (hook, finalizer) in list(hooks.items()):
            finalizer.detach()
            get, set_ = self._accessors(type(loop)) or (
                type(loop).get_task_factory,
                type(loop).set_task_factory,
            )
            if get(loop) is hook.factory:
                set_(loop, hook.inner)

    @property
    def loop_count(self) -> int:
        """How many loops have been instrumented since install."""
        return self._loop_count

    def hook_of(self, loop: asyncio.AbstractEventLoop) -> LoopHook | None:
        """The hook on ``loop``, if asyncwatch instrumented it."""
        entry = self._hooks.get(loop)
        return entry[0] if entry is not None else None

    def instrument(self, loop: asyncio.AbstractEventLoop) -> LoopHook:
        """Put a hook on ``loop`` (once), chaining whatever factory it has."""
        entry = self._hooks.get(loop)
        if entry is not None:
            return entry[0]
        # Not yet in _hooks, so the patched accessors behave exactly as the originals.
        self._loop_count += 1
        shard = self.recorder.new_shard(f"loop-{self._loop_count}")
        hook = LoopHook(self, shard, loop.get_task_factory())
        loop.set_task_factory(hook.factory)
        loop_ref = weakref.ref(loop)

        def is_live() -> bool:
            alive = loop_ref()
            return alive is not None and not alive.is_closed()

        shard.is_live = is_live
        finalizer = weakref.finalize(loop, self.recorder.retire, shard)
        finalizer.atexit = False
        self._hooks[loop] = (hook, finalizer)
        return hook

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop runs: start what schedules on it (``on_loop``), once per loop. Nothing
        does before this, so a loop subclass is never touched while it is being built."""
        entry = self._hooks.get(loop)
        if entry is None or entry[0].attached or not self.active:
            return
        entry[0].attached = True
        if self._on_loop is not None:
            self._on_loop(loop)

    def closed(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop was closed: fold its figures now (its finalizer has nothing left to do).
        May run inside the garbage collector (an unclosed loop's ``__del__`` closes it)."""
        entry = self._hooks.get(loop)
        if entry is None:
            return
        hook, finalizer = entry
        if finalizer.detach() is not None:
            self.recorder.retire(hook.shard)

    # ------------------------------------------------------------------ class patches

    def _accessors(self, cls: type) -> tuple[Any, Any] | None:
        for klass in cls.__mro__:
            if klass in self._originals:
                return self._originals[klass]
        return None

    def patch_loop_class(self, cls: type) -> None:
        """Patch a loop class imported after ``install`` (uvloop's ``Loop``), as ``install``
        patches the ones present then; a class already patched, or an inactive hook, is left."""
        if self.active and cls not in self._originals:
            self._patch_class(cls)

    def _patch_class(self, cls: type) -> None:
        watcher = self
        original_init = cls.__dict__.get("__init__") or getattr(cls, "__init__")  # noqa: B009
        original_get = cls.get_task_factory  # type: ignore[attr-defined]
        original_set = cls.set_task_factory  # type: ignore[attr-defined]
        original_run = cls.run_forever  # type: ignore[attr-defined]
        original_close = cls.close  # type: ignore[attr-defined]
        self._originals[cls] = (original_get, original_set)

        def __init__(loop: asyncio.AbstractEventLoop, *args: Any, **kwargs: Any) -> None:
            original_init(loop, *args, **kwargs)
            if watcher.active:
                try:
                    skip = watcher._skip_thread
                    if skip is None or not skip():
                        watcher.instrument(loop)  # sets the factory only: see attach()
                except Exception as exc:
                    watcher.faults.report("loop_init", exc)

        def run_forever(loop: asyncio.AbstractEventLoop) -> Any:
            if watcher.active:
                try:
                    watcher.attach(loop)
                except Exception as exc:
                    watcher.faults.report("loop_run", exc)
            return original_run(loop)

        def close(loop: asyncio.AbstractEventLoop) -> Any:
            result = original_close(loop)
            if watcher.active and loop.is_closed():
                try:
                    watcher.closed(loop)
                except Exception as exc:
                    watcher.faults.report("loop_close", exc)
            return result

        def get_task_factory(loop: asyncio.AbstractEventLoop) -> Any:
            factory = original_get(loop)
            entry = watcher._hooks.get(loop)
            if entry is not None and factory is entry[0].factory:
                return entry[0].inner
            return factory

        def set_task_factory(loop: asyncio.AbstractEventLoop, factory: Any) -> None:
            entry = watcher._hooks.get(loop)
            if entry is not None and original_get(loop) is entry[0].factory:
                if factory is not None and not callable(factory):
                    raise TypeError("task factory must be a callable or None")
                entry[0].set_inner(factory)
                return
            original_set(loop, factory)

        for name, fn in (
            ("__init__", __init__),
            ("get_task_factory", get_task_factory),
            ("set_task_factory", set_task_factory),
            ("run_forever", run_forever),
            ("close", close),
        ):
            fn.__qualname__ = f"{cls.__qualname__}.{name}"
            fn.__doc__ = getattr(cls, name).__doc__
            fn.__wrapped__ = getattr(cls, name)  # type: ignore[union-attr]
            self._patches.append(Patch(cls, name, fn))

        if cls is asyncio.BaseEventLoop and _renames_after_factory():
            # 3.13.0-3.13.2 rename every task a factory made to "None" when no name was given.
            # Where the factory is only ours (the app set none), the loop would have made the
            # Task itself and kept asyncio's "Task-N": create it through the hook without that
            # rename. With an app factory chained, the interpreter's behaviour is left as is.
            original_create = cls.create_task

            # ``loop``: an instance of the patched class (its private ``_check_closed`` is used)
            def create_task(loop: Any, coro: Any, *, name: Any = None, **kwargs: Any) -> Any:
                entry = watcher._hooks.get(loop) if name is None else None
                if entry is not None and entry[0].inner is None:
                    factory = entry[0].factory
                    if original_get(loop) is factory:
                        loop._check_closed()
                        return factory(loop, coro, **kwargs)
                return original_create(loop, coro, name=name, **kwargs)

            create_task.__qualname__ = f"{cls.__qualname__}.create_task"
            create_task.__doc__ = original_create.__doc__
            create_task.__wrapped__ = original_create  # type: ignore[attr-defined]
            self._patches.append(Patch(cls, "create_task", create_task))
