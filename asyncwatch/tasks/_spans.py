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

A ``TaskSpan`` (``_taskspan``) is a full ``opentelemetry.trace.Span``: code inside the task
that sets attributes, events, links or a status on the current span gets them onto the
exported span (cleaned and bounded by the provider's span limits, as the SDK would). It holds
no task, no frame and no loop: only strings, numbers and span contexts.

Sampling: the SDK's default sampler (parent-based, always on) and ``ALWAYS_ON`` are decided
inline; any other sampler is asked with ``should_sample``, as the SDK's tracer would.

This module imports the OpenTelemetry trace API and SDK: it is imported only once a task span
is wanted (``TaskWatcher.spans``).
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from .._core.measure import exception_name
from .._core.names import CODE_FUNCTION, ERROR_TYPE, OUTCOME
from ._taskspan import TaskSpan

_INTERNAL = SpanKind.INTERNAL
_UNSET = Status(StatusCode.UNSET)
_ERROR = StatusCode.ERROR
_SAMPLED = int(TraceFlags.SAMPLED)
_RANDOM_BIT = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))  # newer SDKs only
_get_current_span = trace_api.get_current_span
_set_span_in_context = trace_api.set_span_in_context
_get_current_context = otel_context.get_current
_attach = otel_context.attach
_OtelContext = otel_context.Context
_Span = trace_api.Span


def _runtime_var() -> tuple[contextvars.ContextVar[Any] | None, str | None]:
    """The ContextVar that holds OpenTelemetry's current context, and the key of the current
    span in it, where the runtime context is the API's default (ContextVars): reading and
    setting them directly does in one call what the public functions do in five. None
    (the public functions are used) for any other runtime context."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY

        runtime = otel_context._RUNTIME_CONTEXT
        if type(runtime) is ContextVarsRuntimeContext:
            var = runtime._current_context
            if isinstance(var, contextvars.ContextVar) and isinstance(_SPAN_KEY, str):
                return var, _SPAN_KEY
    except Exception:  # pragma: no cover - another API version: the public functions
        pass
    return None, None


_CONTEXT_VAR, _SPAN_KEY = _runtime_var()
_EMPTY = _OtelContext()
_DEFAULT_TRACE_STATE = trace_api.DEFAULT_TRACE_STATE
_new_tuple = tuple.__new__
_new_span = object.__new__
# SpanContext is a tuple (trace_id, span_id, is_remote, flags, state, is_valid): built with
# tuple.__new__ when its layout is that one (ids made here are valid by construction).
_RAW_CONTEXT = tuple(SpanContext(1, 1, False)) == (
    1,
    1,
    False,
    trace_api.DEFAULT_TRACE_OPTIONS,
    _DEFAULT_TRACE_STATE,
    True,
)
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
        self._raw = _RAW_CONTEXT and type(ids) is RandomIdGenerator
        self._simple = self._raw and self._kind in (_ALWAYS, _PARENT)
        self._has_config = hasattr(tracer, "_tracer_config")
        is_random = getattr(ids, "is_trace_id_random", None)
        self._root_random = _RANDOM_BIT if is_random is not None and is_random() else 0
        self._flags = {v: TraceFlags(v) for v in (0, _SAMPLED, _RANDOM_BIT, _SAMPLED | _RANDOM_BIT)}
        self._root_flags = self._flags[_SAMPLED | self._root_random]
        self._check()

    def _check(self) -> bool:
        """Whether the fast path applies to the processors as they are now."""
        procs = self._multi._span_processors
        self._procs = procs
        self.fast = self._sdk and all(quiet_processor(p) for p in procs)
        return self.fast

    def _enabled(self) -> bool:
        return not self._has_config or bool(self.tracer._tracer_config.is_enabled)

    def _usable(self) -> bool:
        if not self._sdk:
            return False
        if self._multi._span_processors is not self._procs:
            self._check()  # a processor was added since
        return self.fast and self._enabled()

    # -------------------------------------------------------------- start

    def start(self, name: str, kwargs: dict[str, Any], takes_context: bool) -> Any:
        """Start the span of a task being created (``kwargs``: the factory's own).

        With no ``context`` in ``kwargs``, one is put there: the task's own fresh copy of the
        creator's context with the span current in it (unless the chained factory takes no
        ``context``). A context the caller passed is theirs and is left exactly as it is."""
        var, key = _CONTEXT_VAR, _SPAN_KEY
        given = kwargs.get("context")
        if var is None or key is None:
            return self._start_public(name, given, kwargs, takes_context)
        parent = (given.get(var) or _EMPTY) if given is not None else var.get()
        found = parent.get(key)
        if found is None:
            context = None
        elif type(found) is TaskSpan:
            context = found._context
        else:
            context = found.get_span_context() if isinstance(found, _Span) else None
        if (
            not (
                self.fast
                and self._multi._span_processors is self._procs
                and (not self._has_config or self.tracer._tracer_config.is_enabled)
            )
            and not self._usable()
        ):
            span: Any = self.tracer.start_span(
                name, context=parent, attributes={CODE_FUNCTION: name}
            )
        elif self._simple:
            # The common case, inline: the SDK's random ids and default (or always-on)
            # sampler; span contexts read as the tuples they are.
            if context is not None:
                trace_id, _, _, flags, state, valid = context
                if not valid:
                    context = None
            if context is None:
                trace_id = self._trace_id()
                flags = self._root_flags
                state = _DEFAULT_TRACE_STATE
            elif self._kind == _PARENT and not flags & _SAMPLED:
                # A parent not sampled: not recorded (as the SDK's default sampler decides).
                flags = self._flags[flags & _RANDOM_BIT]
            else:
                flags = self._flags[_SAMPLED | (flags & _RANDOM_BIT)]
            new_context = _new_tuple(
                SpanContext,
                (trace_id, random.getrandbits(64) or self._span_id(), False, flags, state, True),
            )
            if flags & _SAMPLED:
                span = _new_span(TaskSpan)
                span._maker = self
                span._name = name
                span._context = new_context
                span._parent = context
                span._start = _time_ns()
                span._end = span._attributes = span._extra = None
            else:
                span = NonRecordingSpan(new_context)
        else:
            span = self._start(name, parent, context)
        if given is None and takes_context:
            ctx = _copy_context()
            ctx.run(var.set, _OtelContext({**parent, key: span}))
            kwargs["context"] = ctx
        return span

    def _start_public(
        self,
        name: str,
        given: contextvars.Context | None,
        kwargs: dict[str, Any],
        takes_context: bool,
    ) -> Any:
        """``start`` through the public context functions (another runtime context)."""
        parent = given.run(_get_current_context) if given is not None else None
        if self._usable():
            span = self._start(name, parent, _get_current_span(parent).get_span_context())
        else:
            span = self.tracer.start_span(name, context=parent, attributes={CODE_FUNCTION: name})
        if given is None and takes_context:
            ctx = _copy_context()
            ctx.run(_attach, _set_span_in_context(span, parent))
            kwargs["context"] = ctx
        return span

    def _start(self, name: str, parent_ctx: Any, parent: SpanContext | None) -> trace_api.Span:
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
        if self._raw:  # the SDK's random ids: valid by construction
            context = _new_tuple(
                SpanContext,
                (
                    trace_id,
                    random.getrandbits(64) or self._span_id(),
                    False,
                    flags,
                    trace_state or _DEFAULT_TRACE_STATE,
                    True,
                ),
            )
        else:
            context = SpanContext(trace_id, self._span_id(), False, flags, trace_state)
        if not recording:
            return NonRecordingSpan(context)
        return TaskSpan(self, name, context, parent, _time_ns(), attributes)

    # -------------------------------------------------------------- end

    def emit(self, span: TaskSpan) -> None:
        """Hand an ended ``TaskSpan`` to the processors as the SDK's ``ReadableSpan``."""
        if not self._multi._span_processors:
            return  # nobody to hand it to (no exporter): the span was only a context
        attributes: Any = span._attributes
        if attributes is None:
            attributes = {CODE_FUNCTION: span._name}
        else:
            attributes.setdefault(CODE_FUNCTION, span._name)
        limits = self.limits
        extra = span._extra
        user = extra.user if extra is not None else None
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
            events=(extra.events or ()) if extra is not None else (),
            links=(extra.links or ()) if extra is not None else (),
            kind=_INTERNAL,
            instrumentation_info=self._info,
            status=(extra.status or _UNSET) if extra is not None else _UNSET,
            start_time=span._start,
            end_time=span._end,
            instrumentation_scope=self._scope,
        )
        self._multi.on_end(readable)

    def end(self, span: Any, task: asyncio.Task[Any], attributes: dict[str, Any]) -> None:
        """The task ended: end its span (a ``TaskSpan`` or the SDK's) with its outcome."""
        if type(span) is TaskSpan:
            if span._end is not None:
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
            own = span._attributes
            if own is None:
                span._attributes = attributes
            else:
                own.update(attributes)
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(_ERROR, type(exc).__name__))
            span._end = _time_ns()
            if self._multi._span_processors:
                self.emit(span)
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
