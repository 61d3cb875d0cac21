"""A bare ASGI application (no framework), used by the multi-process tests and docs.

Each request fans out to two small coroutines, so every worker has tasks to report:

    asyncwatch run --port-span 8 -- uvicorn examples.hello_asgi:app --workers 4
    asyncwatch run --port-span 8 -- \
        gunicorn -w 4 -k uvicorn_worker.UvicornWorker examples.hello_asgi:app
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any


async def lookup(item: int) -> int:
    await asyncio.sleep(0)
    return item


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    items = await asyncio.gather(lookup(1), lookup(2))
    body = json.dumps({"pid": os.getpid(), "items": items}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
