"""Put on PYTHONPATH by ``asyncwatch run``: install asyncwatch as the interpreter starts.

Then runs the ``sitecustomize`` the environment would have run without us, if any.
A bad setting stops the program with a clear message (it would otherwise run unobserved
without anyone noticing). An interpreter that cannot import asyncwatch (another Python than
the one asyncwatch is installed in) or any other failure says so on stderr, once per
interpreter for the whole process tree, and the program runs unobserved; with
``ASYNCWATCH_REQUIRE=1`` (or ``ASYNCWATCH_RAISE=1``) it stops with exit code 2 instead.
"""

import os
import sys


def _strict() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true")
        for var in ("ASYNCWATCH_REQUIRE", "ASYNCWATCH_RAISE")
    )


def _stop(message: str) -> None:
    """Exit with status 2 (SystemExit raised during interpreter start-up exits with 1 and a
    traceback, so exit directly)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    os._exit(2)


def _unobserved(why: str) -> None:
    """Say once per interpreter (children inherit the record) that this one is unobserved."""
    warned = os.environ.get("ASYNCWATCH_BOOTSTRAP_WARNED", "")
    seen = warned.split(os.pathsep) if warned else []
    if _strict():
        _stop(f"asyncwatch: {why}; stopping (ASYNCWATCH_REQUIRE=1 or ASYNCWATCH_RAISE=1)")
    if sys.executable not in seen:
        sys.stderr.write(f"asyncwatch: {why}; the program runs unobserved\n")
        os.environ["ASYNCWATCH_BOOTSTRAP_WARNED"] = os.pathsep.join([*seen, sys.executable])


def _install() -> None:
    if os.environ.get("ASYNCWATCH_BOOTSTRAP") != "1":
        return
    try:
        import asyncwatch
    except Exception as exc:  # e.g. a different interpreter without asyncwatch
        _unobserved(f"cannot be imported by {sys.executable} ({exc!r})")
        return
    try:
        asyncwatch.install()
    except asyncwatch.ConfigError as exc:
        _stop(f"asyncwatch: {exc}")
    except Exception as exc:
        _unobserved(f"not installed in {sys.executable} ({exc!r})")


def _chain() -> None:
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_install()
_chain()
