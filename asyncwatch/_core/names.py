"""The one source of every metric name, unit, kind and attribute key asyncwatch exports.

The docs' metric reference, the dashboards and the alert rules are checked against
``METRICS`` by tests, so nothing can query a metric that does not exist. Names follow the
OpenTelemetry semantic conventions where one exists (process, CPython GC, HTTP server) and the
``asyncwatch.*`` namespace elsewhere. Units are UCUM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "updowncounter", "gauge", "histogram"]

# Attribute keys
CODE_FUNCTION = "code.function.name"  # semconv: fully qualified function name
OUTCOME = "asyncwatch.task.outcome"  # ok | error | cancelled
ERROR_TYPE = "error.type"  # semconv
# error.type of an HTTP request the client abandoned before the response was complete: not
# an error of the app (kept out of error counts and ratios; no status code if none was sent)
CLIENT_DISCONNECT = "client_disconnect"
HOOK = "asyncwatch.hook"
SIGNAL = "asyncwatch.signal"  # metrics | traces
REASON = "asyncwatch.reason"
CPU_MODE = "cpu.mode"  # semconv
GC_GENERATION = "cpython.gc.generation"  # semconv
CONTEXT_SWITCH_TYPE = "process.context_switch.type"  # semconv (1.27+; was ..._switch_type)
FINDING_KIND = "asyncwatch.finding.kind"  # deadlock | stuck_task
ADVICE_TARGET = "asyncwatch.advisor.target"  # executor / semaphore site / batch site / loop
ADVICE_KNOB = "asyncwatch.advisor.knob"  # max_workers | concurrency_limit | batch_size | processes
RESOURCE = "asyncwatch.resource"  # a semaphore's creation site, an executor, a gate's name
GATE_UNIT = "asyncwatch.gate.unit"  # requests | tokens
QUEUE_OPERATION = "asyncwatch.queue.operation"  # get | put
TASK_NAME = "asyncwatch.task.name"  # span attribute only (unbounded, never on metrics)
HTTP_METHOD = "http.request.method"  # semconv; unknown methods are _OTHER
HTTP_ROUTE = "http.route"  # semconv; the route template, never the raw path
HTTP_STATUS = "http.response.status_code"  # semconv
URL_SCHEME = "url.scheme"  # semconv
PROTOCOL_NAME = "network.protocol.name"  # semconv: http | websocket
PROTOCOL_VERSION = "network.protocol.version"  # semconv: 1.1, 2...
WS_DIRECTION = "asyncwatch.websocket.direction"  # received | sent
CODE_FILE = "code.file.path"  # semconv: the culprit's source file
CODE_LINE = "code.line.number"  # semconv: the culprit's line
BLOCK_DURATION = "asyncwatch.block.duration"  # span event attribute: seconds held so far
BLOCK_ONGOING = "asyncwatch.block.ongoing"  # span event attribute: still held when added
BLOCKED_EVENT = "asyncwatch.loop.blocked"  # span event name

OVERFLOW = "_OTHER"  # value of a bounded attribute once its cap is reached (semconv style)


@dataclass(frozen=True)
class MetricDef:
    """One exported metric."""

    name: str
    unit: str
    kind: Kind
    description: str
    attributes: tuple[str, ...] = ()

    @property
    def prometheus(self) -> str:
        """The Prometheus name (histograms add _bucket/_sum/_count).

        Every path gives this one name: the embedded endpoint (opentelemetry-exporter-
        prometheus) and an OpenTelemetry Collector or Prometheus's own OTLP receiver (both use
        the otlptranslator rules) split the name into tokens, drop UCUM annotations (``{task}``),
        append the unit's word unless a token already is it, and ``total`` for counters. They
        differ on unit ``1``: the Python exporter adds nothing, the Collector adds ``ratio`` to
        gauges. So a dimensionless gauge's name ends in ``ratio`` itself, and both agree
        (checked against a real scrape and the Collector's rules by tests/test_names.py).
        """
        tokens = [t for t in self.name.replace(".", "_").split("_") if t]
        suffix = _PROM_UNITS.get(self.unit, "")
        if suffix and suffix not in tokens:
            tokens.append(suffix)
        if self.kind == "counter":
            tokens = [t for t in tokens if t != "total"] + ["total"]
        return "_".join(tokens)


_PROM_UNITS = {"s": "seconds", "By": "bytes", "1": ""}

TASK_CREATED = MetricDef(
    "asyncwatch.task.created",
    "{task}",
    "counter",
    "Tasks created, per coroutine.",
    (CODE_FUNCTION,),
)
TASK_COMPLETED = MetricDef(
    "asyncwatch.task.completed",
    "{task}",
    "counter",
    "Tasks finished, per coroutine and outcome (ok, error with error.type, cancelled).",
    (CODE_FUNCTION, OUTCOME, ERROR_TYPE),
)
TASK_IN_FLIGHT = MetricDef(
    "asyncwatch.task.in_flight",
    "{task}",
    "updowncounter",
    "Tasks created and not yet finished, per coroutine.",
    (CODE_FUNCTION,),
)
TASK_PEAK = MetricDef(
    "asyncwatch.task.in_flight.peak",
    "{task}",
    "gauge",
    "Most tasks of the coroutine in flight at once since install (summed over event loops).",
    (CODE_FUNCTION,),
)
TASK_DURATION = MetricDef(
    "asyncwatch.task.duration",
    "s",
    "histogram",
    "Run time from a task's first step to its end (timed sample, weighted to all tasks).",
    (CODE_FUNCTION,),
)
TASK_SCHEDULE_DELAY = MetricDef(
    "asyncwatch.task.schedule_delay",
    "s",
    "histogram",
    "Wait from task creation to its first step (timed sample, weighted to all tasks).",
    (CODE_FUNCTION,),
)
TASK_MEMORY = MetricDef(
    "asyncwatch.task.memory",
    "By",
    "gauge",
    "Live bytes allocated by code running in the coroutine (opt-in, tracemalloc).",
    (CODE_FUNCTION,),
)
DEADLOCKS = MetricDef(
    "asyncwatch.deadlocks",
    "{deadlock}",
    "counter",
    "Deadlocks found: cycles of tasks waiting on each other or on locks they hold (each once).",
)
STUCK_TASKS = MetricDef(
    "asyncwatch.stuck_tasks",
    "{task}",
    "counter",
    "Stuck tasks found: long waits on something nothing can wake (each wait once).",
)
TASK_STUCK = MetricDef(
    "asyncwatch.task.stuck",
    "{task}",
    "gauge",
    "Tasks stuck now, by finding kind: in a deadlock cycle, or in a stuck wait.",
    (FINDING_KIND,),
)
DEADLOCK_SCAN_TIME = MetricDef(
    "asyncwatch.deadlock.scan.duration",
    "s",
    "counter",
    "Time the event loops spent in asyncwatch's deadlock and stuck-task scans.",
)
ADVICE_SUGGESTED = MetricDef(
    "asyncwatch.advisor.suggested",
    "{value}",
    "gauge",
    "The advisor's suggested value of a knob (workers, concurrency limit, batch size, "
    "processes), per target.",
    (ADVICE_TARGET, ADVICE_KNOB),
)
ADVICE_CURRENT = MetricDef(
    "asyncwatch.advisor.current",
    "{value}",
    "gauge",
    "The knob's value now, for each target the advisor suggests changing.",
    (ADVICE_TARGET, ADVICE_KNOB),
)
ADVICE_GAIN = MetricDef(
    "asyncwatch.advisor.expected_gain.ratio",
    "1",
    "gauge",
    "Expected throughput ratio if the suggestion is applied (e.g. 3.5 = 3.5x).",
    (ADVICE_TARGET, ADVICE_KNOB),
)
SEMAPHORE_IN_USE = MetricDef(
    "asyncwatch.semaphore.in_use",
    "{permit}",
    "gauge",
    "Permits held now, per semaphore creation site (or asyncwatch.concurrency name), summed "
    "over its objects.",
    (RESOURCE,),
)
SEMAPHORE_LIMIT = MetricDef(
    "asyncwatch.semaphore.limit",
    "{permit}",
    "gauge",
    "The limit in force: that of the semaphore made last at the site.",
    (RESOURCE,),
)
SEMAPHORE_WAITS = MetricDef(
    "asyncwatch.semaphore.waits",
    "{wait}",
    "counter",
    "Acquires that found the semaphore taken and waited.",
    (RESOURCE,),
)
SEMAPHORE_WAIT_TIME = MetricDef(
    "asyncwatch.semaphore.wait.time",
    "s",
    "counter",
    "Time tasks spent waiting for the semaphore (its rate is the mean number of waiters).",
    (RESOURCE,),
)
SEMAPHORE_FAILED = MetricDef(
    "asyncwatch.semaphore.failed",
    "{hold}",
    "counter",
    "Holds that failed: released while an exception propagated, or asyncwatch.rejected().",
    (RESOURCE,),
)
POOL_IN_USE = MetricDef(
    "asyncwatch.pool.in_use",
    "{call}",
    "gauge",
    "Calls running in the executor now (process pools: submitted and not done).",
    (RESOURCE,),
)
POOL_QUEUED = MetricDef(
    "asyncwatch.pool.queued",
    "{call}",
    "gauge",
    "Calls waiting for a thread pool's worker now.",
    (RESOURCE,),
)
POOL_WAIT_TIME = MetricDef(
    "asyncwatch.pool.wait.time",
    "s",
    "counter",
    "Time calls spent queued for a thread pool's worker (its rate is the mean queue length).",
    (RESOURCE,),
)
POOL_WORKERS = MetricDef(
    "asyncwatch.pool.workers",
    "{worker}",
    "gauge",
    "The executor's max_workers.",
    (RESOURCE,),
)
GATE_PASSES = MetricDef(
    "asyncwatch.gate.passes",
    "{unit}",
    "counter",
    "Requests (and tokens) through an asyncwatch.gate: 60 x its rate, against the gate's limit.",
    (RESOURCE, GATE_UNIT),
)
GATE_LIMIT = MetricDef(
    "asyncwatch.gate.limit",
    "{unit}",
    "gauge",
    "An asyncwatch.gate's declared limit, per minute (rpm: requests, tpm: tokens).",
    (RESOURCE, GATE_UNIT),
)
GATE_WAIT_TIME = MetricDef(
    "asyncwatch.gate.wait.time",
    "s",
    "counter",
    "Time callers spent waiting at an asyncwatch.gate (its rate is the mean number waiting).",
    (RESOURCE,),
)
GATE_WAITING = MetricDef(
    "asyncwatch.gate.waiting",
    "{task}",
    "gauge",
    "Callers waiting at an asyncwatch.gate now.",
    (RESOURCE,),
)
QUEUE_DEPTH = MetricDef(
    "asyncwatch.queue.depth",
    "{item}",
    "gauge",
    "Items in the asyncio queues of a site now (created at, or first used at).",
    (RESOURCE,),
)
QUEUE_WAIT_TIME = MetricDef(
    "asyncwatch.queue.wait.time",
    "s",
    "counter",
    "Time tasks waited to get from an empty queue or put into a full one, per site.",
    (RESOURCE, QUEUE_OPERATION),
)
QUEUE_WAITING = MetricDef(
    "asyncwatch.queue.waiting",
    "{task}",
    "gauge",
    "Tasks waiting now to get from an empty queue or put into a full one, per site.",
    (RESOURCE, QUEUE_OPERATION),
)
INTERNAL_ERRORS = MetricDef(
    "asyncwatch.internal.errors",
    "{error}",
    "counter",
    "Errors inside asyncwatch's own hooks, caught so the application never sees them.",
    (HOOK,),
)
EXPORT_DROPPED = MetricDef(
    "asyncwatch.export.dropped",
    "{item}",
    "counter",
    "Exports or spans dropped because an exporter was slow, dead or its queue was full.",
    (SIGNAL, REASON),
)
HTTP_SERVER_DURATION = MetricDef(
    "http.server.request.duration",
    "s",
    "histogram",
    "Duration of HTTP server requests, to the last body chunk (OTel HTTP semantic conventions).",
    (HTTP_METHOD, HTTP_ROUTE, HTTP_STATUS, URL_SCHEME, PROTOCOL_VERSION, ERROR_TYPE),
)
HTTP_SERVER_ACTIVE = MetricDef(
    "http.server.active_requests",
    "{request}",
    "updowncounter",
    "HTTP server requests in progress (until their last body chunk).",
    (HTTP_METHOD, URL_SCHEME),
)
HTTP_SERVER_REQUEST_SIZE = MetricDef(
    "http.server.request.body.size",
    "By",
    "histogram",
    "Size of HTTP server request bodies as received by the application.",
    (HTTP_METHOD, HTTP_ROUTE, HTTP_STATUS, URL_SCHEME, PROTOCOL_VERSION, ERROR_TYPE),
)
HTTP_SERVER_RESPONSE_SIZE = MetricDef(
    "http.server.response.body.size",
    "By",
    "histogram",
    "Size of HTTP server response bodies as sent by the application.",
    (HTTP_METHOD, HTTP_ROUTE, HTTP_STATUS, URL_SCHEME, PROTOCOL_VERSION, ERROR_TYPE),
)
HTTP_SERVER_DISCONNECTS = MetricDef(
    "asyncwatch.http.server.disconnects",
    "{request}",
    "counter",
    "Requests the client abandoned before the response was complete (not errors of the app).",
    (HTTP_METHOD, HTTP_ROUTE, URL_SCHEME),
)
HTTP_SERVER_BACKGROUND = MetricDef(
    "asyncwatch.http.server.background.duration",
    "s",
    "histogram",
    "Time the app kept working after the response was complete (background tasks), "
    "with error.type if that work failed.",
    (HTTP_METHOD, HTTP_ROUTE, ERROR_TYPE),
)
HTTP_SERVER_REQUEST_TASKS = MetricDef(
    "asyncwatch.http.server.request.tasks",
    "{task}",
    "histogram",
    "Asyncio tasks created while handling one request or WebSocket connection "
    "(directly or by its tasks).",
    (HTTP_METHOD, HTTP_ROUTE, PROTOCOL_NAME),
)
HTTP_SERVER_TASKS_COMPLETED = MetricDef(
    "asyncwatch.http.server.tasks.completed",
    "{task}",
    "counter",
    "Tasks created while handling requests, finished, per route and outcome.",
    (HTTP_METHOD, HTTP_ROUTE, PROTOCOL_NAME, OUTCOME, ERROR_TYPE),
)
WEBSOCKET_DURATION = MetricDef(
    "asyncwatch.websocket.connection.duration",
    "s",
    "histogram",
    "Duration of WebSocket connections handled by the app.",
    (HTTP_ROUTE, URL_SCHEME, ERROR_TYPE),
)
WEBSOCKET_ACTIVE = MetricDef(
    "asyncwatch.websocket.active_connections",
    "{connection}",
    "updowncounter",
    "WebSocket connections in progress.",
    (URL_SCHEME,),
)
WEBSOCKET_MESSAGES = MetricDef(
    "asyncwatch.websocket.messages",
    "{message}",
    "counter",
    "WebSocket messages received and sent by the app, per route.",
    (HTTP_ROUTE, WS_DIRECTION),
)
LOOP_LAG = MetricDef(
    "asyncwatch.loop.lag",
    "s",
    "histogram",
    "How late each event loop ran a heartbeat due every 25 ms or less (loop lag).",
)
LOOP_BLOCKED = MetricDef(
    "asyncwatch.loop.blocked",
    "{block}",
    "counter",
    "Times one callback held an event loop longer than block_threshold_s, per culprit line.",
    (CODE_FILE, CODE_LINE, CODE_FUNCTION),
)
LOOP_BLOCKED_DURATION = MetricDef(
    "asyncwatch.loop.blocked.duration",
    "s",
    "histogram",
    "How long each block held the event loop, per culprit line.",
    (CODE_FILE, CODE_LINE, CODE_FUNCTION),
)
PROCESS_CPU_TIME = MetricDef(
    "process.cpu.time", "s", "counter", "CPU time used by the process.", (CPU_MODE,)
)
PROCESS_MEMORY_USAGE = MetricDef(
    "process.memory.usage", "By", "updowncounter", "Resident set size of the process."
)
PROCESS_MEMORY_VIRTUAL = MetricDef(
    "process.memory.virtual", "By", "updowncounter", "Virtual memory size of the process."
)
PROCESS_MEMORY_USS = MetricDef(
    "asyncwatch.process.memory.uss",
    "By",
    "updowncounter",
    "Unique set size: memory freed if the process exited (where the OS reports it).",
)
PROCESS_THREADS = MetricDef(
    "process.thread.count", "{thread}", "updowncounter", "Threads in the process."
)
PROCESS_OPEN_FDS = MetricDef(
    "process.unix.file_descriptor.count",
    "{file_descriptor}",
    "updowncounter",
    "Open file descriptors (Unix).",
)
PROCESS_CONTEXT_SWITCHES = MetricDef(
    "process.context_switches",
    "{context_switch}",
    "counter",
    "Context switches of the process.",
    (CONTEXT_SWITCH_TYPE,),
)
GC_COLLECTIONS = MetricDef(
    "cpython.gc.collections",
    "{collection}",
    "counter",
    "Garbage collections run, per generation.",
    (GC_GENERATION,),
)
GC_COLLECTED = MetricDef(
    "cpython.gc.collected_objects",
    "{object}",
    "counter",
    "Objects collected by the garbage collector, per generation.",
    (GC_GENERATION,),
)
GC_UNCOLLECTABLE = MetricDef(
    "cpython.gc.uncollectable_objects",
    "{object}",
    "counter",
    "Objects the garbage collector found uncollectable, per generation.",
    (GC_GENERATION,),
)

METRICS: tuple[MetricDef, ...] = tuple(
    v for v in dict(globals()).values() if isinstance(v, MetricDef)
)
BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}

# Bucket boundaries (seconds) of exported task timing histograms: 1-2.5-5 per decade.
TIMING_BOUNDS: tuple[float, ...] = tuple(
    float(f"{m}e{e}") for e in range(-5, 3) for m in (1, 2.5, 5)
)[:-1]

# http.server.request.duration: the bucket boundaries the OTel HTTP semantic conventions advise.
HTTP_DURATION_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)
# Body sizes (bytes): powers of four from 64 B to 64 MiB (the conventions advise none).
BODY_SIZE_BOUNDS: tuple[float, ...] = (0.0, *(float(4**k) for k in range(3, 14)))
TASKS_PER_REQUEST_BOUNDS: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0)
WEBSOCKET_DURATION_BOUNDS: tuple[float, ...] = (
    0.01, 0.1, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
)
