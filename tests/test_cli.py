"""`asyncwatch run -- CMD`: observes a real program in a subprocess, with no code change."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import asyncwatch

from .conftest import free_port, python_env

ASYNCWATCH = shutil.which("asyncwatch", path=os.path.dirname(sys.executable)) or "asyncwatch"

APP = textwrap.dedent(
    """
    import asyncio, sys

    async def work(i):
        await asyncio.sleep(0)
        return i

    async def main():
        await asyncio.gather(*(work(i) for i in range(25)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    asyncio.run(main())
    """
)


def run_cli(
    *args: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ASYNCWATCH, *args],
        env=env or python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_run_observes_an_unmodified_script(tmp_path: Path) -> None:
    """The wrapped script's tasks show up on the embedded endpoint; it exits normally."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    port = free_port()
    proc = subprocess.Popen(
        [ASYNCWATCH, "run", "--port", str(port), "--", sys.executable, str(script)],
        env=python_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {
            s.labels.get("code_function_name"): s.value
            for f in text_string_to_metric_families(text)
            if f.name == "asyncwatch_task_created"
            for s in f.samples
        }
        assert samples["__main__.work"] == 25
    finally:
        _, err = proc.communicate("\n", timeout=30)
    assert proc.returncode == 0, err


def test_run_bad_setting_fails_before_the_program_starts(tmp_path: Path) -> None:
    """A bad setting stops `run` with exit code 2 and a message naming the variable."""
    marker = tmp_path / "started"
    result = run_cli(
        "run",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w')",
        env=python_env(ASYNCWATCH_MAX_KEYS="lots"),
    )
    assert result.returncode == 2
    assert "ASYNCWATCH_MAX_KEYS='lots'" in result.stderr
    assert not marker.exists()


def test_run_set_flag_names_unknown_settings() -> None:
    """--set with an unknown name fails and says so."""
    result = run_cli("run", "--set", "max_kees=3", "--", sys.executable, "-c", "pass")
    assert result.returncode == 2
    assert "max_kees" in result.stderr


def test_run_reports_a_missing_command() -> None:
    """A command that does not exist is exit code 127 with a clear message."""
    result = run_cli("run", "--", "no-such-program-asyncwatch")
    assert result.returncode == 127
    assert "command not found: no-such-program-asyncwatch" in result.stderr


def test_run_keeps_the_environments_own_sitecustomize(tmp_path: Path) -> None:
    """An existing sitecustomize on PYTHONPATH still runs, after asyncwatch installs."""
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text("import os\nos.environ['CUSTOM_SITE_RAN'] = '1'\n")
    code = (
        "import os, asyncwatch; "
        "print(os.environ.get('CUSTOM_SITE_RAN'), asyncwatch.current() is not None)"
    )
    result = run_cli(
        "run",
        "--metrics-exporter",
        "none",
        "--",
        sys.executable,
        "-c",
        code,
        env=python_env(PYTHONPATH=str(custom)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True"]


def test_run_opens_no_port_for_programs_without_an_event_loop() -> None:
    """Exporters start with the first event loop, so plain scripts open nothing."""
    port = free_port()
    code = "import asyncwatch; w = asyncwatch.current(); print(w.prometheus_url)"
    result = run_cli("run", "--port", str(port), "--", sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_run_disabled_is_a_no_op() -> None:
    """ASYNCWATCH_ENABLED=0 leaves the program unobserved."""
    code = textwrap.dedent(
        """
        import asyncio, asyncwatch
        async def main():
            return asyncio.get_running_loop().get_task_factory()
        print(asyncio.run(main()))
        """
    )
    result = run_cli(
        "run", "--", sys.executable, "-c", code, env=python_env(ASYNCWATCH_ENABLED="0")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def test_config_command_shows_settings() -> None:
    """`asyncwatch config` lists each setting with its variable, marking changed ones."""
    result = run_cli("config", env=python_env(ASYNCWATCH_MAX_KEYS="42"))
    assert result.returncode == 0, result.stderr
    line = next(row for row in result.stdout.splitlines() if " max_keys " in row)
    assert line.startswith("*") and "42" in line and "ASYNCWATCH_MAX_KEYS" in line


def test_run_refused_setting_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    """A value that used to pass and fail later (issue 13.4: memory_frames above tracemalloc's
    limit left the program running unobserved with exit code 0) stops `run` before CMD."""
    marker = tmp_path / "started"
    result = run_cli(
        "run",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w')",
        env=python_env(ASYNCWATCH_MEMORY_ATTRIBUTION="1", ASYNCWATCH_MEMORY_FRAMES="70000"),
    )
    assert result.returncode == 2, result.stderr
    assert "ASYNCWATCH_MEMORY_FRAMES='70000'" in result.stderr
    assert not marker.exists()
    # a value that needs the machine to check it is refused there too
    missing = tmp_path / "no-such-folder"
    result = run_cli(
        "run",
        "--set",
        f"profile_dir={missing}",
        "--",
        sys.executable,
        "-c",
        f"open({str(marker)!r}, 'w')",
    )
    assert result.returncode == 2, result.stderr
    assert f"profile_dir={str(missing)!r} (ASYNCWATCH_PROFILE_DIR): not a writable" in result.stderr
    assert not marker.exists()


def test_run_reports_a_bad_set_value_under_its_set_name() -> None:
    """--set max_keys=lots is reported as --set max_keys=..., not as ASYNCWATCH_MAX_KEYS."""
    result = run_cli("run", "--set", "max_keys=lots", "--", sys.executable, "-c", "pass")
    assert result.returncode == 2
    assert "--set max_keys=lots: expected a whole number" in result.stderr
    assert "ASYNCWATCH_MAX_KEYS" not in result.stderr
    result = run_cli("run", "--port", "70000", "--", sys.executable, "-c", "pass")
    assert result.returncode == 2
    assert "--port '70000': must be a TCP port" in result.stderr


def test_version_flag() -> None:
    """`asyncwatch --version` prints the version."""
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"asyncwatch {asyncwatch.__version__}"


def test_console_without_a_terminal_says_so() -> None:
    """`asyncwatch console` with stdin not a terminal: a clear message, no traceback."""
    with socket.socket() as listener:  # a real listening port, so the client gets that far
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = run_cli("console", "--port", str(port), stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "needs a terminal" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real second interpreter: a fresh venv without asyncwatch."""
    folder = tmp_path_factory.mktemp("bare-venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120
    )
    python = folder / "bin" / "python"
    # from its own folder: from the checkout, `-c` would find the source tree on sys.path
    # (and `import asyncwatch` loads nothing else, so it would succeed there)
    found = subprocess.run([python, "-c", "import asyncwatch"], check=False, cwd=folder)
    assert found.returncode != 0
    return python


_SPAWNS_ITSELF = (
    "import subprocess, sys, asyncio; asyncio.run(asyncio.sleep(0));"
    "subprocess.run([sys.executable, '-c', 'pass'], check=True); print('ran')"
)


def test_run_names_an_interpreter_that_cannot_import_asyncwatch(bare_python: Path) -> None:
    """`python` on PATH is another interpreter: stderr says so once (not again for the
    child it starts), naming the interpreter; the program still runs."""
    env = python_env(PATH=f"{bare_python.parent}{os.pathsep}{os.environ['PATH']}")
    result = run_cli("run", "--", "python", "-c", _SPAWNS_ITSELF, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran"
    lines = [line for line in result.stderr.splitlines() if line.startswith("asyncwatch:")]
    assert len(lines) == 1, result.stderr
    assert str(bare_python) in lines[0] and "runs unobserved" in lines[0]


@pytest.mark.parametrize("strict", ["--require", "ASYNCWATCH_REQUIRE=1", "ASYNCWATCH_RAISE=1"])
def test_run_strict_refuses_an_interpreter_without_asyncwatch(
    bare_python: Path, strict: str, tmp_path: Path
) -> None:
    """Under --require / ASYNCWATCH_REQUIRE=1 / ASYNCWATCH_RAISE=1 the program does not run
    unobserved: exit code 2 and the interpreter named."""
    marker = tmp_path / "started"
    extra = dict([strict.split("=")]) if "=" in strict else {}
    flags = [strict] if strict.startswith("--") else []
    env = python_env(**extra)
    result = run_cli(
        "run", *flags, "--", str(bare_python), "-c", f"open({str(marker)!r}, 'w')", env=env
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot be imported by {bare_python}" in result.stderr
    assert not marker.exists()
