"""The hello ASGI app with asyncwatch installed in code, at import time (the one-line way).

Under ``gunicorn --preload`` this import runs in the master before it forks its workers,
which is the fork-safety case: each worker must start over with its own exporter.
"""

import asyncwatch

asyncwatch.install()

from examples.hello_asgi import app  # noqa: E402

__all__ = ["app"]
