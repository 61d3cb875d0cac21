"""Build steps; everything else is in pyproject.toml.

1. Copy exporters/ and grafana/ into the wheel as asyncwatch/_assets_data/. The repository
   keeps one copy of the rules and dashboards; this puts them in the package so ``asyncwatch
   assets DIR`` can write them out (asyncwatch/_assets.py decides which files).
2. Build the optional compiled accelerator, ``asyncwatch/tasks/_fastpath.c`` (the task path's
   hot functions in C, the twin of ``_purepath.py``) and ``asyncwatch/asgi/_fastexchange.c``
   (the HTTP request path's, the twin of ``_pureexchange.py``), where a C compiler and the
   Python headers are present. Where they are not, the build warns and the pure-Python twin is used
   (``optional=True``). Skipped on interpreters it is not written for (PyPy, free-threaded
   CPython). ``ASYNCWATCH_BUILD_EXTENSIONS=required`` makes a failed build an error
   (``./scripts/test`` and the wheel builds set it, so a broken accelerator cannot pass
   unnoticed); ``ASYNCWATCH_BUILD_EXTENSIONS=no`` skips it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _assets_module() -> ModuleType:
    path = HERE / "asyncwatch" / "_assets.py"
    spec = importlib.util.spec_from_file_location("_asyncwatch_assets", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithAssets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        assets = _assets_module()
        target = Path(self.build_lib) / "asyncwatch" / "_assets_data"
        for relative in assets.asset_files(HERE):
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / relative, target / relative)


def _extensions() -> list[Extension]:
    mode = os.environ.get("ASYNCWATCH_BUILD_EXTENSIONS", "auto").lower()
    if mode not in ("auto", "required", "no"):
        raise SystemExit(
            f"ASYNCWATCH_BUILD_EXTENSIONS must be auto, required or no, not {mode!r}"
        )
    supported = platform.python_implementation() == "CPython" and not sysconfig.get_config_var(
        "Py_GIL_DISABLED"
    )
    if mode == "required" and not supported:
        raise SystemExit(
            "ASYNCWATCH_BUILD_EXTENSIONS=required, but the accelerator is written for CPython "
            "with a GIL"
        )
    if mode == "no" or not supported:
        return []
    optional = mode != "required"
    return [
        Extension("asyncwatch.tasks._fastpath", ["asyncwatch/tasks/_fastpath.c"],
                  optional=optional),
        Extension("asyncwatch.asgi._fastexchange", ["asyncwatch/asgi/_fastexchange.c"],
                  optional=optional),
    ]


setup(cmdclass={"build_py": BuildWithAssets}, ext_modules=_extensions())
