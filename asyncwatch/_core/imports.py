"""Work deferred until the app imports a module: patch uvloop, Starlette, the ASGI middleware
only if and when they are imported, instead of importing them at ``install()`` to patch them.

``PostImportHook`` sits on ``sys.meta_path`` and runs a callback right after a named module
is executed (before the importer sees it). It finds the module through the finders after it,
so the import itself is unchanged; a callback that raises is reported, never propagated into
the app's import. ``remove()`` takes it off ``sys.meta_path``; each callback fires once.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


class PostImportHook:
    """Calls ``callbacks[name](module)`` right after module ``name`` is first executed."""

    def __init__(
        self,
        callbacks: dict[str, Callable[[ModuleType], None]],
        on_error: Callable[[str, BaseException], object],
    ) -> None:
        self.callbacks = dict(callbacks)
        self.on_error = on_error
        self._lock = threading.Lock()

    def install(self) -> PostImportHook:
        """Put the hook first on ``sys.meta_path`` (once); returns itself."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        return self

    def remove(self) -> None:
        """Take the hook off ``sys.meta_path``; pending callbacks never fire. Idempotent."""
        self.callbacks = {}
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        """The spec the other finders give, with its loader's ``exec_module`` followed by the
        callback; None (import as usual) for any other name."""
        if fullname not in self.callbacks:
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
            return None  # a legacy loader: imported normally, without the callback
        hook = self

        def exec_module(module: ModuleType) -> None:
            original(module)
            hook.fire(fullname, module)

        loader.exec_module = exec_module  # type: ignore[method-assign,union-attr,unused-ignore]
        return spec

    def fire(self, name: str, module: ModuleType) -> None:
        """Run (once) the callback for ``name``; the hook leaves ``sys.meta_path`` when none
        is left."""
        with self._lock:
            callback = self.callbacks.pop(name, None)
            empty = not self.callbacks
        if empty:
            self.remove()
        if callback is None:
            return
        try:
            callback(module)
        except Exception as exc:
            self.on_error(name, exc)


def when_imported(
    callbacks: dict[str, Callable[[ModuleType], None]],
    on_error: Callable[[str, BaseException], object],
) -> PostImportHook | None:
    """Run each callback on its module now if it is imported already, else right after it is
    imported. The hook for the modules still to come, or None if all were there."""
    waiting = {}
    for name, callback in callbacks.items():
        module = sys.modules.get(name)
        if module is None:
            waiting[name] = callback
            continue
        try:
            callback(module)
        except Exception as exc:
            on_error(name, exc)
    return PostImportHook(waiting, on_error).install() if waiting else None


def twin(package: str, compiled: str, pure: str) -> tuple[ModuleType, str]:
    """The compiled twin of a hot path (module ``package.compiled``, built by ``setup.py``
    where it can be) if it is built and not refused with ``ASYNCWATCH_NO_EXTENSIONS``, else
    its pure-Python twin, imported only then; with which one it is, "compiled (file)" or
    "pure Python (why)" (``asyncwatch config`` prints it)."""
    why = "ASYNCWATCH_NO_EXTENSIONS"
    if os.environ.get("ASYNCWATCH_NO_EXTENSIONS", "") in ("", "0"):
        try:
            module = importlib.import_module(f"{package}.{compiled}")
        except ImportError:
            why = "no compiled accelerator"
        else:
            return module, f"compiled ({os.path.basename(str(module.__file__))})"
    return importlib.import_module(f"{package}.{pure}"), f"pure Python ({why})"
