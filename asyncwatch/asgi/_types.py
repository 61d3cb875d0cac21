"""ASGI's types, spelled as Starlette spells them (``starlette.types``), for the middleware, the
exchanges, the route lookup and the auto-instrumentation.

A scope and a message are mappings from names to values of any type: the ASGI spec fixes some
keys, servers and frameworks add their own (``fastapi.telemetry``, ``state``), and a hostile or
broken app may send anything. So their values stay ``Any`` and the code that reads them checks
what it gets (``scheme.__class__ is str``, ``_is_header``); everything else is typed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]
