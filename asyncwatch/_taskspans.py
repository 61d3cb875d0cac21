"""Task spans without a live SDK span per task: a compact record while the task runs.

A span for every task used to be one ``tracer.start_span`` per task: an SDK ``Span`` with its
lock, its bounded attribute mapping, its event and link lists, built at creation and kept
for the task's whole life, then copied into a ``ReadableSpan`` at the end. Here, while a task
runs, its span is a ``TaskSpan``: the name, the start time, its ``SpanContext`` and the
parent's, and nothing else until someone sets something on it. When the task ends, one
``opentelemetry.sdk.trace.ReadableSpan`` is built and handed to the span processors'
``on_end``, exactly what the SDK hands them.

That shortcut is taken only where nothing can tell the difference: the tracer is the SDK's,
enabled, without the SDK's internal metrics, and every span processor is one that does
nothing when a span starts or is ending (the SDK's ``BatchSpanProcessor`` and
``SimpleSpanProcessor``, asyncwatch's own batch processor, or any processor that overrides
neither ``on_start`` nor ``_on_ending``). Otherwise, and for any tracer that is not the SDK's,
every task span is started with ``tracer.start_span`` as before (``TaskSpans.fast`` is False).

A ``TaskSpan`` is a full ``opentelemetry.trace.Span``: code inside the task that sets
attributes, events, links or a status on the current span gets them onto the exported span
(cleaned and bounded by the provider's span limits, as the SDK would). It holds no task, no
frame and no loop: only strings, numbers and span contexts.

Sampling: the SDK's default sampler (parent-based, always on) and ``ALWAYS_ON`` are decided
inline; any other sampler is asked with ``should_sample``, as the SDK's tracer would.

This module imports the OpenTelemetry trace API and SDK: it is imported only once a task span
is wanted (``TaskWatcher.spans``).
"""

from __future__ import annotations

import contextvars
import logging
import time
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from ._names import CODE_FUNCTION, ERROR_TYPE, OUTCOME, TASK_NAME
from ._recorder import exception_name

logger = logging.getLogger("asyncwatch")

_INTERNAL = SpanKind.INTERNAL
_UNSET = Status(StatusCode.UNSET)
_ERROR = StatusCode.ERROR
_OK = StatusCode.OK
_SAMPLED = int(TraceFlags.SAMPLED)
_RANDOM_BIT = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))  # newer SDKs only
_get_current_span = trace_api.get_current_span
_set_span_in_context = trace_api.set_span_in_context
_get_current_context = otel_context.get_current
_attach = otel_context.attach
_copy_context = contextvars.copy_context
_time_ns = time.time_ns

# on_start / _on_ending implementations that do nothing: a processor whose methods are these
# cannot tell a span that was never "started" from one that was.
_QUIET_HOOKS: frozenset[Any] = frozenset(
    getattr(cls, name, None)
    for cls in (sdk_trace.SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)
    for name in ("on_start", "_on_ending")
)
_MULTI = tuple(
    cls
    for cls in (
        getattr(sdk_trace, "SynchronousMultiSpanProcessor", None),
        getattr(sdk_trace, "ConcurrentMultiSpanProcessor", None),
    )
    if cls is not None
)

# Sampler kinds decided inline.
_ALWAYS = 1  # ALWAYS_ON
_PARENT = 2  # ParentBased(ALWAYS_ON) with the default delegates: the SDK's default
_ASK = 3  # anything else: should_sample()


def quiet_processor(processor: Any) -> bool:
    """Whether ``processor`` does nothing when a span starts or is ending."""
    cls = type(processor)
    return all(getattr(cls, name, None) in _QUIET_HOOKS for name in ("on_start", "_on_ending"))


def _sampler_kind(sampler: Any) -> int:
    if sampler is sampling.ALWAYS_ON:
        return _ALWAYS
    if type(sampler) is sampling.ParentBased:
        delegates = (
            getattr(sampler, "_root", None),
            getattr(sampler, "_remote_parent_sampled", None),
            getattr(sampler, "_remote_parent_not_sampled", None),
            getattr(sampler, "_local_parent_sampled", None),
            getattr(sampler, "_local_parent_not_sampled", None),
        )
        on, off = sampling.ALWAYS_ON, sampling.ALWAYS_OFF
        if delegates == (on, on, off, on, off):
            return _PARENT
    return _ASK


class TaskSpan(trace_api.Span):
    """A task's span while the task runs (see the module docstring)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_links",
        "_maker",
        "_name",
        "_parent",
        "_start",
        "_status",
        "_user",
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
        self._user: dict[str, Any] | None = None  # set by code inside the task: cleaned
        self._events: list[Any] | None = None
        self._links: list[Any] | None = None
        self._status: Status | None = None

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
        user = self._user
        if user is None:
            user = self._user = {}
        user.update(attributes)

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
        if self._events is None:
            self._events = []
        if len(self._events) < limits.max_events:
            self._events.append(sdk_trace.Event(name, bounded, timestamp))

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
        if self._links is None:
            self._links = []
        if len(self._links) < limits.max_links:
            self._links.append(trace_api.Link(context, bounded))

    def update_name(self, name: str) -> None:
        """Rename the span."""
        if not self._ended("Updating name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status, with the SDK's rules (OK is final, UNSET is ignored)."""
        if self._ended("Setting status"):
            return
        current = self._status
        if current is not None and current.status_code is _OK:
            return
        if isinstance(status, Status):
            if status.status_code is StatusCode.UNSET:
                return
            self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

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

    # -------------------------------------------------------------- asyncwatch's end

    def finish(self, task: Any, attributes: dict[str, Any]) -> None:
        """The task ended: outcome attributes, status on error, then ``end``."""
        if self._end is not None:
            return  # ended by the task itself
        exc = None
        if task.cancelled():
            attributes[OUTCOME] = "cancelled"
        else:
            exc = getattr(task, "_exception", None)
            if exc is None:
                attributes[OUTCOME] = "ok"
            else:
                attributes[OUTCOME] = "error"
                attributes[ERROR_TYPE] = exception_name(type(exc))
        own = self._attributes
        if own is None:
            self._attributes = attributes
        else:
            own.update(attributes)
        if exc is not None:
            self.record_exception(exc)
            self.set_status(Status(_ERROR, type(exc).__name__))
        self.end()


class TaskSpans:
    """Starts and ends task spans for one tracer (the fast path where it applies)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.fast = False
        self._procs: Any = None  # the processors tuple the last check was made for
        self._multi: Any = None
        sdk_tracer = isinstance(tracer, sdk_trace.Tracer)
        self._sdk = sdk_tracer and not _internal_metrics(tracer)
        if not self._sdk:
            return
        self._multi = tracer.span_processor
        if not isinstance(self._multi, _MULTI):
            self._sdk = False
            return
        self.resource = tracer.resource
        self.limits = tracer._span_limits
        self._scope = getattr(tracer, "_instrumentation_scope", None)
        self._info = getattr(tracer, "instrumentation_info", None)
        self._sampler = tracer.sampler
        self._kind = _sampler_kind(tracer.sampler)
        ids = tracer.id_generator
        self._trace_id = ids.generate_trace_id
        self._span_id = ids.generate_span_id
        is_random = getattr(ids, "is_trace_id_random", None)
        self._root_random = _RANDOM_BIT if is_random is not None and is_random() else 0
        self._flags = {v: TraceFlags(v) for v in (0, _SAMPLED, _RANDOM_BIT, _SAMPLED | _RANDOM_BIT)}
        self._check()

    def _check(self) -> bool:
        """Whether the fast path applies to the processors as they are now."""
        procs = self._multi._span_processors
        self._procs = procs
        self.fast = self._sdk and all(quiet_processor(p) for p in procs)
        return self.fast

    def _usable(self) -> bool:
        if not self._sdk:
            return False
        config = getattr(self.tracer, "_tracer_config", None)
        if config is not None and not config.is_enabled:
            return False
        if self._multi._span_processors is not self._procs:
            return self._check()  # a processor was added since
        return self.fast

    # -------------------------------------------------------------- start

    def start(self, name: str, given: contextvars.Context | None, takes_context: bool) -> Any:
        """Start the span of a task being created; returns ``(span, context)``.

        ``context`` is the task's own fresh copy of the creator's context with the span
        current in it (None when the caller passed a context, which is theirs and left
        exactly as it is, or when the chained factory takes no ``context``)."""
        parent = given.run(_get_current_context) if given is not None else None
        if self._usable():
            span = self._start(name, parent)
        else:
            span = self.tracer.start_span(name, context=parent, attributes={CODE_FUNCTION: name})
        if given is not None or not takes_context:
            return span, None
        ctx = _copy_context()
        ctx.run(_attach, _set_span_in_context(span, parent))
        return span, ctx

    def _start(self, name: str, parent_ctx: Any) -> trace_api.Span:
        parent: SpanContext | None = _get_current_span(parent_ctx).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self._trace_id()
            random_bit = self._root_random
        else:
            trace_id = parent.trace_id
            random_bit = parent.trace_flags & _RANDOM_BIT
        attributes = None
        kind = self._kind
        if kind == _PARENT:
            recording = sampled = parent is None or parent.trace_flags.sampled
            trace_state = None if parent is None else parent.trace_state
        elif kind == _ALWAYS:
            recording = sampled = True
            trace_state = None if parent is None else parent.trace_state
        else:
            result = self._sampler.should_sample(
                parent_ctx, trace_id, name, _INTERNAL, {CODE_FUNCTION: name}, ()
            )
            recording = result.decision.is_recording()
            sampled = result.decision.is_sampled()
            trace_state = result.trace_state
            attributes = dict(result.attributes) if result.attributes else None
        flags = self._flags[(_SAMPLED if sampled else 0) | random_bit]
        context = SpanContext(trace_id, self._span_id(), False, flags, trace_state)
        if not recording:
            return NonRecordingSpan(context)
        return TaskSpan(self, name, context, parent, _time_ns(), attributes)

    # -------------------------------------------------------------- end

    def emit(self, span: TaskSpan) -> None:
        """Hand an ended ``TaskSpan`` to the processors as the SDK's ``ReadableSpan``."""
        attributes: Any = span._attributes
        if attributes is None:
            attributes = {CODE_FUNCTION: span._name}
        else:
            attributes.setdefault(CODE_FUNCTION, span._name)
        limits = self.limits
        user = span._user
        if user is not None:
            # Code inside the task set these: cleaned and bounded as the SDK would.
            merged = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=False,
                max_value_len=limits.max_attribute_length,
            )
            for key, value in user.items():
                merged[key] = value
            merged._immutable = True
            attributes = merged
        elif limits.max_attribute_length is not None or len(attributes) > (
            limits.max_span_attributes or 128
        ):
            attributes = BoundedAttributes(
                limits.max_span_attributes,
                attributes,
                immutable=True,
                max_value_len=limits.max_attribute_length,
            )
        readable = sdk_trace.ReadableSpan(
            name=span._name,
            context=span._context,
            parent=span._parent,
            resource=self.resource,
            attributes=attributes,
            events=span._events or (),
            links=span._links or (),
            kind=_INTERNAL,
            instrumentation_info=self._info,
            status=span._status or _UNSET,
            start_time=span._start,
            end_time=span._end,
            instrumentation_scope=self._scope,
        )
        self._multi.on_end(readable)

    def end(self, span: Any, task: Any, attributes: dict[str, Any]) -> None:
        """The task ended: end its span (a ``TaskSpan`` or the SDK's) with its outcome."""
        if type(span) is TaskSpan:
            span.finish(task, attributes)
            return
        exc = None
        if task.cancelled():
            attributes[OUTCOME] = "cancelled"
        else:
            exc = getattr(task, "_exception", None)
            attributes[OUTCOME] = "ok" if exc is None else "error"
        if exc is not None:
            attributes[ERROR_TYPE] = exception_name(type(exc))
            span.record_exception(exc)
            span.set_status(Status(_ERROR, type(exc).__name__))
        span.set_attributes(attributes)  # one call: the SDK takes the span's lock per call
        span.end()


def _internal_metrics(tracer: Any) -> bool:
    """Whether the SDK records its own span metrics (then spans take the SDK's path)."""
    metrics = getattr(tracer, "_tracer_metrics", None)
    return metrics is not None and type(metrics).__name__ != "NoOpTracerMetrics"

