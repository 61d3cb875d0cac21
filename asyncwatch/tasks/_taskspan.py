"""A task's span while the task runs: ``TaskSpan``, a full ``opentelemetry.trace.Span``.

``TaskSpans`` (``_spans``) makes one per recorded task span on the fast path and, when the
task ends, hands it to the span processors as the SDK's ``ReadableSpan``. Until then it holds
the name, the start time, its ``SpanContext`` and the parent's, and nothing else until code
inside the task sets something on it: attributes, events, links and a status are kept apart
(``_Extra``, rare) and cleaned and bounded by the provider's span limits as the SDK would. It
holds no task, no frame and no loop: only strings, numbers and span contexts.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.trace import SpanContext, Status, StatusCode

from .._core.names import CODE_FUNCTION

if TYPE_CHECKING:
    from ._spans import TaskSpans

logger = logging.getLogger("asyncwatch")

_OK = StatusCode.OK
_time_ns = time.time_ns


class _Extra:
    """What code inside a task set on its span: rare, so kept apart from ``TaskSpan``."""

    __slots__ = ("events", "links", "status", "user")

    def __init__(self) -> None:
        self.user: dict[str, Any] | None = None  # attributes: cleaned when the span ends
        self.events: list[Any] | None = None
        self.links: list[Any] | None = None
        self.status: Status | None = None


class TaskSpan(trace_api.Span):
    """A task's span while the task runs (see the module docstring)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_extra",
        "_maker",
        "_name",
        "_parent",
        "_start",
    )

    def __init__(
        self,
        maker: TaskSpans,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        start: int,
        attributes: dict[str, Any] | None,
    ) -> None:
        self._maker = maker
        self._name = name
        self._context = context
        self._parent = parent
        self._start = start
        self._end: int | None = None
        self._attributes = attributes  # the sampler's, then asyncwatch's own at the end
        self._extra: _Extra | None = None

    def _more(self) -> _Extra:
        extra = self._extra
        if extra is None:
            extra = self._extra = _Extra()
        return extra

    # -------------------------------------------------------------- the Span API

    def get_span_context(self) -> SpanContext:
        """This span's context (what children are parented to)."""
        return self._context

    def is_recording(self) -> bool:
        """True until the span has ended."""
        return self._end is None

    def _ended(self, what: str) -> bool:
        if self._end is None:
            return False
        logger.warning("%s on ended span.", what)
        return True

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set attributes (cleaned and bounded by the span limits when the span ends)."""
        if self._ended("Setting attribute"):
            return
        extra = self._more()
        if extra.user is None:
            extra.user = {}
        extra.user.update(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute (see ``set_attributes``)."""
        self.set_attributes({key: value})

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        """Add an event, bounded by the span limits as the SDK does."""
        if self._ended("Adding event"):
            return
        limits = self._maker.limits
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        extra = self._more()
        if extra.events is None:
            extra.events = []
        if len(extra.events) < limits.max_events:
            extra.events.append(sdk_trace.Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        """Add a link to another span."""
        if self._ended("Adding link"):
            return
        if not context.is_valid and not attributes and not context.trace_state:
            return
        limits = self._maker.limits
        bounded = BoundedAttributes(
            limits.max_link_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
            immutable=True,
        )
        extra = self._more()
        if extra.links is None:
            extra.links = []
        if len(extra.links) < limits.max_links:
            extra.links.append(trace_api.Link(context, bounded))

    def update_name(self, name: str) -> None:
        """Rename the span (its ``code.function.name`` stays the coroutine's)."""
        if not self._ended("Updating name"):
            if self._attributes is None:
                self._attributes = {}
            self._attributes.setdefault(CODE_FUNCTION, self._name)
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status, with the SDK's rules (OK is final, UNSET is ignored)."""
        if self._ended("Setting status"):
            return
        extra = self._more()
        current = extra.status
        if current is not None and current.status_code is _OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            extra.status = status
        elif status is not StatusCode.UNSET:
            extra.status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Record an exception as an ``exception`` event, as the SDK does."""
        kind = type(exception)
        module = kind.__module__
        qualname = kind.__qualname__
        event: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span now (or at ``end_time``) and hand it to the span processors."""
        if self._ended("Calling end()"):
            return
        self._end = end_time if end_time is not None else _time_ns()
        self._maker.emit(self)

    def __repr__(self) -> str:
        return f"TaskSpan({self._name!r}, span_id={self._context.span_id:016x})"
