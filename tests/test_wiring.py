"""Where code the app makes or calls meets the running Watch (see docs/design/layout.md): the
ASGI middleware, profiles and the console's commands, none of which import the Watch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import asyncwatch
from asyncwatch._core.config import Config, in_force, put_in_force
from asyncwatch.asgi import _middleware
from asyncwatch.console._commands import do_advice, do_profile

QUIET = {"metrics_exporters": ("none",), "loop_watch": False}


@pytest.fixture(autouse=True)
def _clean() -> object:
    asyncwatch.uninstall()
    yield
    asyncwatch.uninstall()


def test_settings_in_force_follow_install_and_uninstall() -> None:
    """Profiles read the running settings: defaults before install, the Watch's while it
    runs, defaults again after uninstall."""
    assert in_force() == Config()
    watch = asyncwatch.install(profile_max_s=7.5, **QUIET)
    assert in_force() is watch.config
    with pytest.raises(ValueError, match=r"profile_max_s=7\.5s"):
        asyncwatch.ProfileSession(seconds=8)
    asyncwatch.uninstall()
    assert in_force() == Config()


def test_a_stopping_watch_does_not_clear_a_newer_ones_settings() -> None:
    """``put_in_force(None, replacing=old)`` leaves newer settings alone."""
    old, new = Config(profile_max_s=1.0), Config(profile_max_s=2.0)
    put_in_force(new)
    try:
        put_in_force(None, replacing=old)
        assert in_force() is new
        put_in_force(None, replacing=new)
        assert in_force() == Config()
    finally:
        put_in_force(None)


def test_the_middleware_sees_which_watch_runs() -> None:
    """The Watch module attaches the running Watch and detaches it when it stops."""
    watch = asyncwatch.install(**QUIET)
    assert _middleware._running is watch
    asyncwatch.uninstall()
    assert _middleware._running is None


def test_a_middleware_made_first_installs_asyncwatch() -> None:
    """In a fresh interpreter, ``AsyncWatchMiddleware(app)`` before ``install()`` installs it
    (through the installer the Watch module registered), with the middleware's config."""
    code = textwrap.dedent(
        """
        import asyncwatch

        async def app(scope, receive, send):
            pass

        assert asyncwatch.current() is None
        asyncwatch.AsyncWatchMiddleware(
            app, config=asyncwatch.Config(metrics_exporters=("none",), timed_per_s=3)
        )
        watch = asyncwatch.current()
        assert watch is not None and watch.config.timed_per_s == 3, watch
        print("installed")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "installed"


def test_console_commands_use_the_watch_they_are_given() -> None:
    """The console's commands read only the Watch handed to them: without one they say so
    (even with asyncwatch installed), with one they use its advisor and settings."""
    watch = asyncwatch.install(advisor=False, profile_max_s=2.0, **QUIET)
    nothing = type("Monitor", (), {"watch": None})()
    assert "not installed" in CliRunner().invoke(do_advice, [], obj=nothing).output
    given = type("Monitor", (), {"watch": watch})()
    assert "advisor off" in CliRunner().invoke(do_advice, [], obj=given).output
    refused = CliRunner().invoke(do_profile, ["30"], obj=given).output
    assert "profile refused" in refused and "profile_max_s" in refused
