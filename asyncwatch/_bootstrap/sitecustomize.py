"""Put on PYTHONPATH by ``asyncwatch run``: install asyncwatch as the interpreter starts.

Then runs the ``sitecustomize`` the environment would have run without us, if any.
A bad setting stops the program with a clear message (it would otherwise run unobserved
without anyone noticing); any other failure leaves the program running, unobserved.
"""

import os
import sys


def _install() -> None:
    if os.environ.get("ASYNCWATCH_BOOTSTRAP") != "1":
        return
    try:
        import asyncwatch
    except Exception as exc:  # e.g. a different interpreter without asyncwatch
        sys.stderr.write(f"asyncwatch: not installed in this interpreter ({exc!r})\n")
        return
    try:
        asyncwatch.install()
    except asyncwatch.ConfigError as exc:
        sys.stderr.write(f"asyncwatch: {exc}\n")
        raise SystemExit(2) from None
    except Exception as exc:
        sys.stderr.write(f"asyncwatch: not installed ({exc!r}); the program runs unobserved\n")


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
