"""What pip users get: the wheel and sdist as built by ``python -m build``.

The wheel carries the licence and the rules, configs and dashboards (copied in from
exporters/ and grafana/ at build time: the repository keeps one copy), and ``asyncwatch
assets DIR`` writes them out. The sdist builds that wheel; it leaves the tests out (they need
Debian's prometheus, npm packages and the whole checkout: run them from a clone).

The compiled accelerator (``setup.py``): the sdist carries its C source and builds it where
there is a compiler; where there is none, the sdist still builds a wheel that installs and
runs on the pure-Python twin. cibuildwheel's configuration selects Linux and macOS wheels for
CPython 3.11 to 3.13.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from asyncwatch import _assets

from .conftest import ROOT, python_env

pytestmark = pytest.mark.slow

ASSETS = _assets.asset_files(ROOT)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it (what ``python -m build`` does)."""
    out = tmp_path_factory.mktemp("dist")
    # Building the sdist writes asyncwatch.egg-info into the checkout, as an editable install
    # does: under the same lock as the scripts' installs (.ci/run runs some beside this suite).
    with open(ROOT / ".install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    (wheel,) = dist.glob("asyncwatch-*.whl")
    return wheel


def test_the_assets_are_the_rules_configs_and_dashboards() -> None:
    names = {str(p) for p in ASSETS}
    assert "exporters/prometheus/prometheus.yml" in names
    assert "exporters/prometheus/rules/asyncwatch.alerts.yml" in names
    assert "grafana/dashboards/asyncwatch-overview.json" in names
    assert "grafana/provisioning/datasources/asyncwatch.yaml" in names
    assert not any(name.endswith(".py") for name in names)


def test_the_wheel_has_the_licence_and_the_assets(dist: Path) -> None:
    with zipfile.ZipFile(_wheel(dist)) as wheel:
        names = set(wheel.namelist())
        packaged = {
            name.removeprefix("asyncwatch/_assets_data/")
            for name in names
            if name.startswith("asyncwatch/_assets_data/")
        }
        assert packaged == {str(p) for p in ASSETS}
        for relative in ASSETS:
            data = wheel.read(f"asyncwatch/_assets_data/{relative}")
            assert data == (ROOT / relative).read_bytes(), relative
        (licence,) = (n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
        assert wheel.read(licence) == (ROOT / "LICENSE").read_bytes()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = wheel.read(metadata).decode()
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert "License-Expression: Apache-2.0" in text
    assert "License-File: LICENSE" in text


def test_the_sdist_builds_the_wheel_and_leaves_the_tests_out(dist: Path) -> None:
    (sdist,) = dist.glob("asyncwatch-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for required in (
        "LICENSE", "setup.py", "pyproject.toml", "README.md", "examples/demo.py",
        "asyncwatch/tasks/_fastpath.c", "asyncwatch/tasks/_purepath.py",
        "asyncwatch/asgi/_fastexchange.c", "asyncwatch/asgi/_pureexchange.py",
    ):  # fmt: skip
        assert required in names
    assert {str(p) for p in ASSETS} <= names  # the wheel above was built from this sdist
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)


def test_asyncwatch_assets_from_the_wheel_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    """pip install the wheel into a new virtual environment, then ``asyncwatch assets DIR``:
    the files written equal the repository's, and a second run over them is fine."""
    venv = tmp_path / "venv"
    # Without pip of its own (Debian's Pythons ship ensurepip apart), filled by ours.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)  # fmt: skip
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", "--disable-pip-version-check", str(_wheel(dist))],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    out = tmp_path / "assets"
    cli = str(venv / "bin" / "asyncwatch")
    for _ in range(2):
        result = subprocess.run(
            [cli, "assets", str(out)],
            cwd=tmp_path,  # not the checkout: the installed package's own copy is used
            env=python_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written == sorted(ASSETS)
    for relative in ASSETS:
        assert (out / relative).read_bytes() == (ROOT / relative).read_bytes(), relative
    (out / ASSETS[0]).write_text("changed by the user\n")
    refused = subprocess.run(
        [cli, "assets", str(out)], capture_output=True, text=True, check=False, timeout=120
    )
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    assert (out / ASSETS[0]).read_text() == "changed by the user\n"


def test_asyncwatch_assets_from_a_checkout(tmp_path: Path) -> None:
    """An editable install (or a checkout on sys.path) writes the repository's own files."""
    from asyncwatch._cli import main

    assert main(["assets", str(tmp_path)]) == 0
    for relative in ASSETS:
        assert (tmp_path / relative).read_bytes() == (ROOT / relative).read_bytes()


def test_the_wheel_built_with_a_compiler_carries_the_accelerator(dist: Path) -> None:
    if shutil.which(os.environ.get("CC", "cc")) is None:  # as ./scripts/test decides
        pytest.skip("no C compiler here: the wheel is pure Python (the next test checks it)")
    with zipfile.ZipFile(_wheel(dist)) as wheel:
        names = wheel.namelist()
    for module in ("asyncwatch/tasks/_fastpath", "asyncwatch/asgi/_fastexchange"):
        found = {n for n in names if n.startswith(f"{module}.")}
        assert f"{module}.pyi" in found  # its types
        (compiled,) = found - {f"{module}.pyi"}
        assert compiled.endswith(".so")
    assert not any(n.endswith(".c") for n in names)  # the source stays in the sdist


def test_the_sdist_installs_without_a_compiler(dist: Path, tmp_path: Path) -> None:
    """No C compiler (``CC=false``): the sdist still builds a wheel, which installs, has no
    compiled module, and runs on the pure-Python task path."""
    (sdist,) = dist.glob("asyncwatch-*.tar.gz")
    out = tmp_path / "wheel"
    env = python_env(CC="false")
    env.pop("ASYNCWATCH_BUILD_EXTENSIONS", None)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "-w", str(out), str(sdist)],
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = out.glob("asyncwatch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not any(("_fastpath" in n or "_fastexchange" in n) and not n.endswith(".pyi")
                       for n in archive.namelist())
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    check = (
        "import asyncwatch, sys; from asyncwatch.tasks import ACCELERATOR;"
        "from asyncwatch.asgi._exchange import ACCELERATOR as HTTP;"
        "print(asyncwatch.__file__); print(ACCELERATOR); print(HTTP)"
    )
    env = python_env(PYTHONPATH=str(target))
    env.pop("ASYNCWATCH_NO_EXTENSIONS", None)
    ran = subprocess.run(
        [sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
        check=False, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    where, path, http_path = ran.stdout.splitlines()
    assert where.startswith(str(target))  # the wheel just installed, not the checkout
    assert path == http_path == "pure Python (no compiled accelerator)"
    wheel_check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "wheel-check")], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert wheel_check.returncode == 1  # what cibuildwheel would refuse
    assert "not the compiled one" in wheel_check.stderr


def test_cibuildwheel_builds_linux_and_macos_wheels_for_311_to_313() -> None:
    """What ``[tool.cibuildwheel]`` selects (no Docker needed to list it)."""
    cibw = Path(sys.executable).parent / "cibuildwheel"
    for platform, tags in (
        ("linux", {"manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64",
                   "musllinux_aarch64"}),
        ("macos", {"macosx_x86_64", "macosx_arm64"}),
    ):  # fmt: skip
        listed = subprocess.run(
            [str(cibw), "--print-build-identifiers", "--platform", platform, str(ROOT)],
            cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
            env=python_env(),
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        ids = set(listed.stdout.split())
        assert ids == {f"{py}-{tag}" for py in ("cp311", "cp312", "cp313") for tag in tags}
