"""Task spans through the real OpenTelemetry SDK: the compact record while a task runs, what
reaches the span processors when it ends, and the SDK's own path where a processor needs it."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import types
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

import asyncwatch
from asyncwatch._core import names as n
from asyncwatch._watch import current as asyncwatch_current

from .conftest import wait_for

HERE = __name__
SEEN: list[Any] = []  # what each spanned task found current inside it
TRACER: dict[str, Any] = {}  # "test": the test's tracer, for work inside the tasks


@pytest.fixture
def exported() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """An SDK provider exporting synchronously to memory; asyncwatch installed on it, a span
    for every task."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    asyncwatch.install(
        metrics_exporters=("none",), task_span_ratio=1.0, tracer_provider=provider,
        raise_errors=True,
    )
    SEEN.clear()
    TRACER["test"] = provider.get_tracer("test")
    yield provider, exporter
    asyncwatch.uninstall(timeout_s=2)
    SEEN.clear()


async def job() -> None:
    SEEN.append(trace.get_current_span())
    with TRACER["test"].start_as_current_span("inside"):
        await asyncio.sleep(0)


async def failing() -> None:
    SEEN.append(trace.get_current_span())
    await asyncio.sleep(0)
    raise KeyError("gone")


async def waits(event: asyncio.Event) -> None:
    SEEN.append(trace.get_current_span())
    await event.wait()


async def annotated() -> None:
    span = trace.get_current_span()
    SEEN.append(span)
    span.set_attribute("app.items", [1, 2, 3])
    span.set_attributes({"app.user": "u1"})
    span.add_event("checkpoint", {"n": 1})
    span.update_name("renamed")
    await asyncio.sleep(0)


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_a_running_task_has_a_compact_span_and_its_children_nest_under_it(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """While the task runs its current span is asyncwatch's record (not a live SDK span);
    the exported span is the creator's child and the parent of what the task starts."""
    provider, exporter = exported
    tracer = provider.get_tracer("test")

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            await asyncio.create_task(job())

    asyncio.run(main())
    (inside,) = SEEN
    assert type(inside).__name__ == "TaskSpan"
    assert not isinstance(inside, SdkSpan)
    spans = spans_by_name(exporter)
    task_span = spans[f"{HERE}.job"]
    assert isinstance(task_span, ReadableSpan)
    request = spans["request"]
    assert task_span.parent is not None
    assert task_span.parent.span_id == request.context.span_id
    assert task_span.context.trace_id == request.context.trace_id
    assert task_span.context == inside.get_span_context()
    assert task_span.context.trace_flags.sampled
    assert spans["inside"].parent is not None
    assert spans["inside"].parent.span_id == task_span.context.span_id
    assert task_span.kind is trace.SpanKind.INTERNAL
    assert task_span.instrumentation_scope is not None
    assert task_span.instrumentation_scope.name == "asyncwatch"
    assert task_span.resource is provider.resource
    assert task_span.start_time is not None and task_span.end_time is not None
    assert task_span.start_time <= spans["inside"].start_time <= task_span.end_time
    attributes = dict(task_span.attributes or {})
    assert attributes[n.CODE_FUNCTION] == f"{HERE}.job"
    assert attributes[n.OUTCOME] == "ok"
    assert str(attributes[n.TASK_NAME]).startswith("Task-")
    assert task_span.status.status_code is StatusCode.UNSET


def test_a_failed_task_span_has_error_status_and_the_exception_event(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A task that raises: ERROR status named by the exception type, error.type, and the
    SDK's ``exception`` event (type, message, stack trace)."""
    _, exporter = exported

    async def main() -> None:
        await asyncio.gather(failing(), return_exceptions=True)

    asyncio.run(main())
    assert type(SEEN[0]).__name__ == "TaskSpan"
    span = spans_by_name(exporter)[f"{HERE}.failing"]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyError"
    attributes = dict(span.attributes or {})
    assert attributes[n.OUTCOME] == "error"
    assert attributes[n.ERROR_TYPE] == "KeyError"
    (event,) = span.events
    assert event.name == "exception"
    event_attributes = dict(event.attributes or {})
    assert event_attributes["exception.type"] == "KeyError"
    assert event_attributes["exception.message"] == "'gone'"
    assert "in failing" in str(event_attributes["exception.stacktrace"])
    assert event_attributes["exception.escaped"] == "False"


def test_a_cancelled_task_span_says_cancelled_without_error(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A cancelled task's span: outcome cancelled, status left unset, no exception event."""
    _, exporter = exported

    async def main() -> None:
        task = asyncio.create_task(waits(asyncio.Event()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert type(SEEN[0]).__name__ == "TaskSpan"
    span = spans_by_name(exporter)[f"{HERE}.waits"]
    assert dict(span.attributes or {})[n.OUTCOME] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET
    assert span.events == ()


def test_what_the_task_sets_on_its_span_is_exported_cleaned(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Attributes, events and a new name set on the current span inside the task reach the
    exported span, cleaned as the SDK cleans them (a list becomes a tuple)."""
    _, exporter = exported

    async def main() -> None:
        await asyncio.create_task(annotated())

    asyncio.run(main())
    assert type(SEEN[0]).__name__ == "TaskSpan"
    span = spans_by_name(exporter)["renamed"]
    attributes = dict(span.attributes or {})
    assert attributes["app.items"] == (1, 2, 3)
    assert attributes["app.user"] == "u1"
    assert attributes[n.CODE_FUNCTION] == f"{HERE}.annotated"
    assert attributes[n.OUTCOME] == "ok"
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [("checkpoint", {"n": 1})]


def test_a_context_passed_to_create_task_is_the_parent_and_left_untouched(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """``create_task(context=ctx)``: the span's parent is the span current in ``ctx``, and
    ``ctx`` itself gets no span of asyncwatch's."""
    provider, exporter = exported
    tracer = provider.get_tracer("test")

    async def main() -> None:
        with tracer.start_as_current_span("outer"):
            ctx = contextvars.copy_context()
        await asyncio.get_running_loop().create_task(job(), context=ctx)
        assert ctx.run(trace.get_current_span).get_span_context() == outer_context[0]

    outer_context: list[SpanContext] = []
    original = tracer.start_as_current_span

    def remember(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        return _Remembering(manager, outer_context)

    tracer.start_as_current_span = remember  # type: ignore[method-assign]
    asyncio.run(main())
    assert SEEN[0].get_span_context() == outer_context[0]  # ctx as it was: outer current
    spans = spans_by_name(exporter)
    task_span = spans[f"{HERE}.job"]
    assert task_span.parent is not None
    assert task_span.parent.span_id == spans["outer"].context.span_id
    assert task_span.context.trace_id == spans["outer"].context.trace_id
    watch = asyncwatch_current()
    assert watch is not None and watch.tasks.spans().fast  # the compact record's path


class _Remembering:
    """Context manager wrapper that records the span context it entered."""

    def __init__(self, manager: Any, into: list[SpanContext]) -> None:
        self.manager = manager
        self.into = into

    def __enter__(self) -> Any:
        span = self.manager.__enter__()
        self.into.append(span.get_span_context())
        return span

    def __exit__(self, *exc: object) -> Any:
        return self.manager.__exit__(*exc)


def test_under_a_parent_not_sampled_nothing_is_recorded_but_the_trace_goes_on() -> None:
    """The SDK's default sampler (parent-based): under a parent that is not sampled the task
    span is not recorded or exported, and it carries the parent's trace id on."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    watch = asyncwatch.install(
        metrics_exporters=("none",), task_span_ratio=1.0, tracer_provider=provider,
        raise_errors=True,
    )
    SEEN.clear()
    TRACER["test"] = provider.get_tracer("test")
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))

    async def main() -> None:
        with trace.use_span(NonRecordingSpan(parent)):
            await asyncio.create_task(job())

    asyncio.run(main())
    (inside,) = SEEN
    assert not inside.is_recording()
    assert inside.get_span_context().trace_id == 0x1234
    assert not inside.get_span_context().trace_flags.sampled
    names = [s.name for s in exporter.get_finished_spans()]
    assert f"{HERE}.job" not in names and "inside" not in names
    assert watch.tasks.spans().fast  # decided inline, not by the SDK's tracer


def test_any_other_sampler_is_asked() -> None:
    """A sampler other than the defaults decides through ``should_sample``: a ratio of 0
    records no task span at all."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    watch = asyncwatch.install(
        metrics_exporters=("none",), task_span_ratio=1.0, tracer_provider=provider,
        raise_errors=True,
    )
    SEEN.clear()
    TRACER["test"] = provider.get_tracer("test")

    async def main() -> None:
        await asyncio.create_task(job())

    asyncio.run(main())
    assert type(SEEN[0]) is NonRecordingSpan
    assert exporter.get_finished_spans() == ()
    assert watch.tasks.spans().fast  # asked by asyncwatch, not through tracer.start_span


class StartWatcher(SpanProcessor):
    """A processor that needs ``on_start``: it sees every span start."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span.name)


def test_a_processor_that_needs_on_start_gets_the_sdk_path() -> None:
    """With a processor that overrides ``on_start``, task spans are the SDK's own: it sees
    each start, and the spans and their nesting are as before."""
    exporter = InMemorySpanExporter()
    watcher = StartWatcher()
    provider = TracerProvider()
    provider.add_span_processor(watcher)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    asyncwatch.install(
        metrics_exporters=("none",), task_span_ratio=1.0, tracer_provider=provider,
        raise_errors=True,
    )
    SEEN.clear()
    tracer = TRACER["test"] = provider.get_tracer("test")

    async def main() -> None:
        with tracer.start_as_current_span("request"):
            await asyncio.create_task(job())
            await asyncio.gather(failing(), return_exceptions=True)

    asyncio.run(main())
    assert all(isinstance(span, SdkSpan) for span in SEEN)
    assert f"{HERE}.job" in watcher.started and f"{HERE}.failing" in watcher.started
    spans = spans_by_name(exporter)
    assert spans[f"{HERE}.job"].parent.span_id == spans["request"].context.span_id  # type: ignore[union-attr]
    assert spans["inside"].parent.span_id == spans[f"{HERE}.job"].context.span_id  # type: ignore[union-attr]
    failed = spans[f"{HERE}.failing"]
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})[n.ERROR_TYPE] == "KeyError"


def test_a_processor_added_later_switches_to_the_sdk_path(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Processors are checked again when the provider's list changes: one that needs
    ``on_start``, added after task spans began, gets every later start."""
    provider, exporter = exported

    async def main() -> None:
        await asyncio.create_task(job())

    asyncio.run(main())
    assert type(SEEN[-1]).__name__ == "TaskSpan"
    watcher = StartWatcher()
    provider.add_span_processor(watcher)
    asyncio.run(main())
    assert isinstance(SEEN[-1], SdkSpan)
    assert watcher.started.count(f"{HERE}.job") == 1
    assert [s.name for s in exporter.get_finished_spans()].count(f"{HERE}.job") == 2


def test_the_batch_processor_and_subclasses_that_keep_on_start_take_the_fast_path() -> None:
    """The SDK's batch processor (and asyncwatch's counting subclass) do nothing at start:
    task spans stay compact records with them."""
    from asyncwatch.tasks._spans import quiet_processor

    exporter = InMemorySpanExporter()
    batch = BatchSpanProcessor(exporter)
    try:
        assert quiet_processor(batch)
        assert quiet_processor(SimpleSpanProcessor(exporter))
        assert not quiet_processor(StartWatcher())

        class EndOnly(SpanProcessor):
            def on_end(self, span: ReadableSpan) -> None:
                pass

        assert quiet_processor(EndOnly())
    finally:
        batch.shutdown()


_HOLDS_NOTHING_OF = (asyncio.Task, types.CoroutineType, types.FrameType, asyncio.AbstractEventLoop)


def test_finished_tasks_span_records_are_freed(
    exported: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Once its task has ended and been dropped, no task's span record stays alive, and a
    record refers to no task, coroutine, frame or loop."""
    _, exporter = exported
    refs: list[weakref.ref[Any]] = []

    async def main() -> None:
        for _ in range(10):
            event = asyncio.Event()
            tasks = [asyncio.create_task(waits(event)) for _ in range(200)]
            await asyncio.sleep(0)
            for span in SEEN:
                assert type(span).__name__ == "TaskSpan"
                held = gc.get_referents(span)
                assert not any(
                    isinstance(x, _HOLDS_NOTHING_OF)
                    for x in held
                )
                refs.append(weakref.ref(span))
            SEEN.clear()
            event.set()
            await asyncio.gather(*tasks)
            del tasks

    asyncio.run(main())
    assert len(refs) == 2000
    assert len(exporter.get_finished_spans()) >= 2000

    def all_freed() -> bool:
        gc.collect()
        return all(r() is None for r in refs)

    wait_for(all_freed, what="every finished task's span record to be freed")
