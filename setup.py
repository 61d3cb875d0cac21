"""Build step: copy exporters/ and grafana/ into the wheel as asyncwatch/_assets_data/.

Everything else is in pyproject.toml. The repository keeps one copy of the rules and
dashboards; this puts them in the package so ``asyncwatch assets DIR`` can write them out
(asyncwatch/_assets.py decides which files).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

from setuptools import setup
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


setup(cmdclass={"build_py": BuildWithAssets})
