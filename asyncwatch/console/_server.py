"""The live console: aiomonitor with asyncwatch's commands, started by ``install(console=True)``.

* **Where it listens.** ``console_host`` (127.0.0.1) on ``console_port`` (telnet terminal UI),
  ``console_webui_port`` (aiomonitor's web UI) and, only while a REPL session is open,
  ``console_repl_port``. A non-loopback host is refused (``ConfigError``) unless
  ``console_allow_remote`` is set, which logs a warning.
* **The web UI is off by default** (``console_webui=True`` turns it on). It is a web page
  that can cancel tasks, so any other web page the user opens is a potential client: see
  ``_hostguard`` for what it refuses (foreign ``Host``/``Origin``, state-changing requests
  without the header its own page sends). The telnet console does all it does and more, and
  no browser can speak to it.
* **The REPL is off by default.** aiomonitor's ``console`` command opens a Python REPL inside
  the app: arbitrary code execution for anyone who reaches the port (any local user, any
  process sharing the network namespace). ``console_repl=True`` turns it on.
* **Which loop.** aiomonitor watches one loop: the loop running (or set) when ``install()`` is
  called, else the first event loop created afterwards. When that loop is closed, the console
  moves to the next loop asyncwatch instruments (so ``asyncio.run(setup()); asyncio.run(main())``
  ends up on ``main``'s loop).
* **Its own thread and loop.** aiomonitor serves from a daemon thread with its own event loop,
  so the console answers while the app's loop is blocked. asyncwatch leaves that loop
  uninstrumented (its tasks would only be noise in ``top``).
* **Task factories coexist.** aiomonitor only touches the task factory with
  ``console_task_tracing`` (its ``hook_task_factory``): its factory then becomes the inner
  factory asyncwatch chains to (``_tasks`` patches ``set_task_factory``), so both keep working.
  It is refused when the app already has its own factory, because aiomonitor's would replace
  rather than chain it. aiomonitor's ``close()`` puts back the factory only if it is still its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from typing import Any

from .._core.config import ConfigError
from .._core.stacks import PACKAGE_DIR

logger = logging.getLogger("asyncwatch")
_OWN_DIR = os.path.abspath(PACKAGE_DIR) + os.sep

_MAX_FAILURES = 3  # console start attempts (one per new loop) before giving up
_local = threading.local()  # .console_thread: True in aiomonitor's UI thread


def is_console_thread() -> bool:
    """Whether the calling thread is the console's own (aiomonitor UI) thread."""
    return bool(getattr(_local, "console_thread", False))


def _monitor_class() -> type:
    import aiomonitor
    from aiomonitor.utils import _filter_stack

    class AsyncWatchMonitor(aiomonitor.Monitor):  # type: ignore[misc]
        """aiomonitor's Monitor that reports start-up errors instead of hanging on them, and
        serves its web UI only if asked to, behind the host guard."""

        def __init__(
            self,
            loop: asyncio.AbstractEventLoop,
            *,
            watch: Any,
            webui: bool = False,
            allowed_hosts: tuple[str, ...] = (),
            **kwargs: Any,
        ) -> None:
            super().__init__(loop, **kwargs)
            self.watch = watch
            self.webui = webui
            self.allowed_hosts = allowed_hosts
            self.prompt = "asyncwatch >>> "
            self.start_error: BaseException | None = None
            self._ui_thread.name = "asyncwatch-console"

        async def _ui_main_async(self) -> None:
            # aiomonitor 0.7's own, but the web UI is optional and guarded (see _hostguard).
            import asyncio
            import functools

            import janus
            from aiohttp import web
            from aiomonitor.monitor import TelnetServer, init_webui, interact

            from .._core.hostguard import HostPolicy, aiohttp_guard

            loop = asyncio.get_running_loop()
            self._termination_info_queue: Any = janus.Queue()
            self._cancellation_chain_queue: Any = janus.Queue()
            self._ui_loop = loop
            self._ui_forever_future = loop.create_future()
            self._ui_termination_handler_task = loop.create_task(
                self._ui_handle_termination_updates()
            )
            self._ui_cancellation_handler_task = loop.create_task(
                self._ui_handle_cancellation_updates()
            )
            telnet_server = TelnetServer(
                interact=functools.partial(interact, self),
                host=self._host,
                port=self._termui_port,
            )
            webui_runner = None
            if self.webui:
                webui_app = await init_webui(self)
                webui_app.middlewares.insert(
                    0, aiohttp_guard(HostPolicy(str(self._host), self.allowed_hosts))
                )
                webui_runner = web.AppRunner(webui_app)
                await webui_runner.setup()
                site = web.TCPSite(webui_runner, str(self._host), self._webui_port)
                await site.start()
            telnet_server.start()
            await asyncio.sleep(0)
            self._ui_started.set()
            try:
                await self._ui_forever_future
            except asyncio.CancelledError:
                pass
            finally:
                termui_tasks = {*self._termui_tasks}
                for termui_task in termui_tasks:
                    termui_task.cancel()
                await asyncio.gather(*termui_tasks, return_exceptions=True)
                self._ui_termination_handler_task.cancel()
                self._ui_cancellation_handler_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ui_termination_handler_task
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ui_cancellation_handler_task
                await telnet_server.stop()
                if webui_runner is not None:
                    await webui_runner.cleanup()

        def _ui_main(self) -> None:
            _local.console_thread = True
            try:
                super()._ui_main()
            except BaseException as exc:
                # aiomonitor's start() waits for this event forever if set-up fails.
                self.start_error = exc
            finally:
                self._ui_started.set()

        def _create_task(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            task = super()._create_task(loop, coro, **kwargs)
            stack = self._created_tracebacks.get(task)
            if stack:
                # Drop asyncwatch's own hook frame so `ps` shows where the app made the task.
                kept = [f for f in stack if not f.filename.startswith(_OWN_DIR)]
                if kept and _filter_stack(kept):
                    self._created_tracebacks[task] = kept
                else:
                    # e.g. asyncio.run's main task: nothing of the app's own is left, and
                    # aiomonitor's `ps` would fail on an empty stack; show "-" instead.
                    del self._created_tracebacks[task]
            return task

        def close(self) -> None:
            if not self._started or getattr(self, "_closed", True):
                return
            ui_loop = getattr(self, "_ui_loop", None)
            future = getattr(self, "_ui_forever_future", None)
            if ui_loop is not None and future is not None and not ui_loop.is_closed():
                with contextlib.suppress(RuntimeError):  # its loop already ended
                    ui_loop.call_soon_threadsafe(future.cancel)
            loop = self._monitored_loop
            if self._hook_task_factory and loop.get_task_factory() == self._create_task:
                loop.set_task_factory(self._original_task_factory)
            if threading.current_thread() is not self._ui_thread:
                self._ui_thread.join(5)
            self._closed = True

    return AsyncWatchMonitor


class Console:
    """Owns the aiomonitor instance: attach to a loop, move on when it closes, stop."""

    def __init__(self, watch: Any, namespace: dict[str, Any]) -> None:
        self.watch = watch
        self.namespace = namespace  # what the console's Python REPL starts with
        self.config = watch.config
        self.monitor: Any = None
        self._lock = threading.Lock()
        self._cls: type | None = None
        self._stopped = False
        self._failures = 0

    def check(self) -> None:
        """Fail fast if the console extra is missing; register the commands."""
        try:
            import aiomonitor
        except ImportError:
            raise ConfigError(
                "console=True (ASYNCWATCH_CONSOLE=1) needs aiomonitor: "
                "pip install 'asyncwatch[console]'"
            ) from None
        from ._commands import register

        self._cls = _monitor_class()
        register(aiomonitor.monitor_cli)
        if self.config.console_allow_remote and not _loopback(self.config.console_host):
            logger.warning(
                "asyncwatch: the console listens on %s (console_allow_remote): anyone who "
                "reaches port %d%s can inspect and cancel tasks%s",
                self.config.console_host,
                self.config.console_port,
                f" or {self.config.console_webui_port}" if self.config.console_webui else "",
                " and run code (console_repl is on)" if self.config.console_repl else "",
            )

    def on_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        """A loop was instrumented. True if it is the console's own loop (leave it alone)."""
        if is_console_thread():
            hook = self.watch.tasks.hook_of(loop)
            if hook is not None:
                hook.switch_off()
            return True
        with self._lock:
            if self._stopped:
                return False
            current = self.monitor
            if current is not None and not current._monitored_loop.is_closed():
                return False
            if current is not None:
                self.monitor = None
                self._close(current)
            if self._failures >= _MAX_FAILURES:
                return False  # gave up (logged): do not probe the port for every new loop
            self.monitor = self._attach(loop)
            if self.monitor is None:
                self._failures += 1
        return False

    def _attach(self, loop: asyncio.AbstractEventLoop) -> Any:
        cfg = self.config
        try:
            _check_free(cfg.console_host, cfg.console_port)
            tracing = cfg.console_task_tracing
            if tracing and loop.get_task_factory() is not None:
                logger.warning(
                    "asyncwatch: console_task_tracing is off for this loop: it already has a "
                    "task factory, which aiomonitor's would replace instead of chaining"
                )
                tracing = False
            assert self._cls is not None
            monitor = self._cls(
                loop,
                watch=self.watch,
                host=cfg.console_host,
                termui_port=cfg.console_port,
                webui_port=cfg.console_webui_port,
                console_port=cfg.console_repl_port,
                console_enabled=cfg.console_repl,
                hook_task_factory=tracing,
                webui=cfg.console_webui,
                allowed_hosts=cfg.allowed_hosts,
                locals={"__name__": "__console__", **self.namespace, "loop": loop},
            )
            monitor.start()
            _raise_start_error(monitor)
        except Exception as exc:
            logger.warning(
                "asyncwatch: the console could not start on %s:%d: %s (the app runs on)",
                cfg.console_host,
                cfg.console_port,
                exc,
            )
            return None
        logger.info(
            "asyncwatch: console at telnet://%s:%d (asyncwatch console --port %d)%s",
            cfg.console_host,
            cfg.console_port,
            cfg.console_port,
            f", web UI http://{cfg.console_host}:{cfg.console_webui_port}"
            if cfg.console_webui
            else "",
        )
        return monitor

    @property
    def loop(self) -> Any:
        """The app loop the console is attached to, if any."""
        monitor = self.monitor
        return monitor._monitored_loop if monitor is not None else None

    def stop(self) -> None:
        """Close the console (joins its thread). Idempotent."""
        with self._lock:
            self._stopped = True
            monitor, self.monitor = self.monitor, None
        if monitor is not None:
            self._close(monitor)

    def forget_after_fork(self) -> None:
        """In a forked child the console thread does not exist: start afresh on a new loop."""
        self._lock = threading.Lock()
        self.monitor = None

    @staticmethod
    def _close(monitor: Any) -> None:
        try:
            monitor.close()
        except Exception:
            logger.debug("asyncwatch: closing the console failed", exc_info=True)


def _raise_start_error(monitor: Any) -> None:
    if monitor.start_error is not None:
        raise monitor.start_error


def _loopback(host: str) -> bool:
    from .._core.config import is_loopback

    return is_loopback(host)


def _check_free(host: str, port: int) -> None:
    """Raise OSError if (host, port) cannot be bound (aiomonitor would only log it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
