"""Generate asyncwatch's Grafana dashboards (grafana/dashboards/*.json) from the tables below.

    python grafana/generate.py            # rewrite the dashboards
    python grafana/generate.py --check    # exit 1 if a committed dashboard is not current
    python grafana/generate.py --pending  # list what waits for metrics of other issues

Built with grafana-foundation-sdk (Grafana's own dashboards-as-code SDK, pinned in
pyproject.toml so the output is reproducible). Each panel is one ``Panel(...)`` entry in a
row of a dashboard. A panel (or template variable) that needs metrics asyncwatch does not
export yet carries ``waits_for="issue N: ..."`` and is left out of the JSON; a row or a
dashboard with nothing active is left out too. When the issue's metric names land in
``asyncwatch/_names.py``, delete that one ``waits_for`` line (fix the names in the query if
they came out different) and regenerate: tests/test_exporters_grafana.py fails until you do,
checks every metric an active query uses against asyncwatch's metric table, and runs every
query against a real Prometheus scraping examples/dashboard_load.py.

Every dashboard has a data source variable and filters by service (``service.name`` from
``target_info``), job and instance; the instance list follows the service and job chosen, so
"All" instances means all instances of those services.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label filters every query carries (template variables substituted by Grafana).
SEL = 'job=~"$job", instance=~"$instance"'
TASK = SEL + ', code_function_name=~"$coroutine"'
ROUTE = SEL + ', http_route=~"$route"'
RATE = "[$__rate_interval]"
# requests the client abandoned (error.type client_disconnect): not server errors, not served
NOT_DISCONNECT = 'error_type!="client_disconnect"'


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel, with its series legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: ``kind`` is "timeseries" or "stat"."""

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    waits_for: str | None = None


@dataclass(frozen=True)
class Variable:
    """A query template variable: values of ``label`` on the series ``selector``."""

    name: str
    label: str
    selector: str
    title: str
    waits_for: str | None = None

    @property
    def query(self) -> str:
        return f"label_values({self.selector}, {self.label})"


@dataclass(frozen=True)
class Board:
    """A dashboard: rows of panels."""

    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    variables: tuple[Variable, ...] = ()
    tags: tuple[str, ...] = field(default=("asyncwatch",))


COMMON_VARIABLES = (
    Variable("service", "service_name", "target_info", "Service"),
    Variable("job", "job", 'target_info{service_name=~"$service"}', "Job"),
    Variable(
        "instance", "instance", 'target_info{service_name=~"$service", job=~"$job"}', "Instance"
    ),
)


def _quantiles(metric: str, by: str, sel: str) -> tuple[Query, ...]:
    """p50/p95/p99 of a histogram, per ``by``."""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}{RATE})))",
            f"{{{{{by}}}}} p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    )


def _stat(
    title: str, expr: str, unit: str, description: str, waits_for: str | None = None
) -> Panel:
    return Panel(
        title, (Query(expr),), unit, description, "stat", width=6, height=4, waits_for=waits_for
    )


# A blocked-loop culprit: the OTel code.* attributes of asyncwatch.loop.blocked* (issue 4)
CULPRIT = "code_file_path, code_line_number, code_function_name"
CULPRIT_LEGEND = "{{code_file_path}}:{{code_line_number}} {{code_function_name}}"

OVERVIEW = Board(
    "asyncwatch-overview",
    "asyncwatch / Overview",
    "Every asyncio task, grouped by coroutine: rate, errors, duration, waiting, in flight; "
    "the event loop; process memory, CPU and GC.",
    variables=(
        *COMMON_VARIABLES,
        Variable(
            "coroutine",
            "code_function_name",
            "asyncwatch_task_created_total{" + SEL + "}",
            "Coroutine",
        ),
    ),
    rows=(
        (
            "Tasks",
            (
                _stat(
                    "Tasks started",
                    f"sum(rate(asyncwatch_task_created_total{{{TASK}}}{RATE}))",
                    "ops",
                    "Tasks created per second, all selected coroutines.",
                ),
                _stat(
                    "Tasks failing",
                    f'sum(rate(asyncwatch_task_completed_total{{{TASK}, asyncwatch_task_outcome="error"}}{RATE}))'
                    f" / sum(rate(asyncwatch_task_completed_total{{{TASK}}}{RATE}))",
                    "percentunit",
                    "Share of finished tasks that ended with an exception.",
                ),
                _stat(
                    "In flight",
                    f"sum(asyncwatch_task_in_flight{{{TASK}}})",
                    "short",
                    "Tasks created and not finished yet.",
                ),
                _stat(
                    "Schedule delay p99",
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(asyncwatch_task_schedule_delay_seconds_bucket{{{TASK}}}{RATE})))",
                    "s",
                    "Wait from task creation to its first step: high when the loop is busy or blocked.",
                ),
                Panel(
                    "Tasks created per second, by coroutine",
                    (
                        Query(
                            f"sum by (code_function_name) (rate(asyncwatch_task_created_total{{{TASK}}}{RATE}))",
                            "{{code_function_name}}",
                        ),
                    ),
                    "ops",
                ),
                Panel(
                    "Tasks finished per second, by outcome",
                    (
                        Query(
                            "sum by (asyncwatch_task_outcome) "
                            f"(rate(asyncwatch_task_completed_total{{{TASK}}}{RATE}))",
                            "{{asyncwatch_task_outcome}}",
                        ),
                    ),
                    "ops",
                    "ok, error (raised an exception) or cancelled.",
                ),
                Panel(
                    "Task errors per second, by coroutine and exception type",
                    (
                        Query(
                            "sum by (code_function_name, error_type) (rate(asyncwatch_task_completed_total"
                            f'{{{TASK}, asyncwatch_task_outcome="error"}}{RATE}))',
                            "{{code_function_name}} {{error_type}}",
                        ),
                    ),
                    "ops",
                ),
                Panel(
                    "Error ratio, by coroutine",
                    (
                        Query(
                            "sum by (code_function_name) (rate(asyncwatch_task_completed_total"
                            f'{{{TASK}, asyncwatch_task_outcome="error"}}{RATE}))'
                            " / sum by (code_function_name) "
                            f"(rate(asyncwatch_task_completed_total{{{TASK}}}{RATE}))",
                            "{{code_function_name}}",
                        ),
                    ),
                    "percentunit",
                ),
                Panel(
                    "Task duration p50 / p95 / p99, by coroutine",
                    _quantiles("asyncwatch_task_duration_seconds", "code_function_name", TASK),
                    "s",
                    "From a task's first step to its end (a timed sample, weighted to all tasks).",
                ),
                Panel(
                    "Schedule delay p50 / p95 / p99, by coroutine",
                    _quantiles(
                        "asyncwatch_task_schedule_delay_seconds", "code_function_name", TASK
                    ),
                    "s",
                    "From task creation to its first step: time spent waiting for the event loop.",
                ),
                Panel(
                    "Tasks in flight, by coroutine",
                    (
                        Query(
                            f"sum by (code_function_name) (asyncwatch_task_in_flight{{{TASK}}})",
                            "{{code_function_name}}",
                        ),
                    ),
                ),
                Panel(
                    "Peak tasks in flight, by coroutine",
                    (
                        Query(
                            f"max by (code_function_name) (asyncwatch_task_in_flight_peak{{{TASK}}})",
                            "{{code_function_name}}",
                        ),
                    ),
                    description="Most tasks in flight at once since the process started (largest process).",
                ),
            ),
        ),
        (
            "Event loop",
            (
                Panel(
                    "Event loop lag p50 / p99, by instance",
                    _quantiles("asyncwatch_loop_lag_seconds", "instance", SEL)[::2],
                    "s",
                    "How late the loop's heartbeat runs: every callback waits at least this long.",
                ),
                Panel(
                    "Blocked-loop events, by culprit",
                    (
                        Query(
                            f"sum by ({CULPRIT}) (increase(asyncwatch_loop_blocked_total{{{SEL}}}{RATE}))",
                            CULPRIT_LEGEND,
                        ),
                    ),
                    description="Times the watchdog saw the loop held past its threshold, by the line that held it.",
                ),
            ),
        ),
        (
            "Memory, CPU and GC",
            (
                Panel(
                    "Memory (RSS and USS), by instance",
                    (
                        Query(
                            f"sum by (instance) (process_memory_usage_bytes{{{SEL}}})",
                            "RSS {{instance}}",
                        ),
                        Query(
                            f"sum by (instance) (asyncwatch_process_memory_uss_bytes{{{SEL}}})",
                            "USS {{instance}}",
                        ),
                    ),
                    "bytes",
                    "Resident set size, and unique set size (what exiting the process would free).",
                ),
                Panel(
                    "Live memory allocated per coroutine (opt-in)",
                    (
                        Query(
                            f"sum by (code_function_name) (asyncwatch_task_memory_bytes{{{TASK}}})",
                            "{{code_function_name}}",
                        ),
                    ),
                    "bytes",
                    "Bytes still alive that code running in each coroutine allocated "
                    "(ASYNCWATCH_MEMORY_ATTRIBUTION=1; costly).",
                ),
                Panel(
                    "CPU, by instance and mode",
                    (
                        Query(
                            f"sum by (instance, cpu_mode) (rate(process_cpu_time_seconds_total{{{SEL}}}{RATE}))",
                            "{{instance}} {{cpu_mode}}",
                        ),
                    ),
                    "percentunit",
                    "CPU seconds per second: 100% is one core busy.",
                ),
                Panel(
                    "Garbage collections per second, by generation",
                    (
                        Query(
                            "sum by (cpython_gc_generation) "
                            f"(rate(cpython_gc_collections_total{{{SEL}}}{RATE}))",
                            "gen {{cpython_gc_generation}}",
                        ),
                    ),
                    "ops",
                ),
                Panel(
                    "Objects collected and uncollectable per second",
                    (
                        Query(
                            "sum by (cpython_gc_generation) "
                            f"(rate(cpython_gc_collected_objects_total{{{SEL}}}{RATE}))",
                            "collected, gen {{cpython_gc_generation}}",
                        ),
                        Query(
                            f"sum(rate(cpython_gc_uncollectable_objects_total{{{SEL}}}{RATE}))",
                            "uncollectable",
                        ),
                    ),
                    "ops",
                ),
                Panel(
                    "Threads and file descriptors, by instance",
                    (
                        Query(
                            f"sum by (instance) (process_thread_count{{{SEL}}})",
                            "threads {{instance}}",
                        ),
                        Query(
                            f"sum by (instance) (process_unix_file_descriptor_count{{{SEL}}})",
                            "fds {{instance}}",
                        ),
                    ),
                ),
                Panel(
                    "Context switches per second",
                    (
                        Query(
                            "sum by (instance, process_context_switch_type) "
                            f"(rate(process_context_switches_total{{{SEL}}}{RATE}))",
                            "{{instance}} {{process_context_switch_type}}",
                        ),
                    ),
                    "ops",
                ),
                Panel(
                    "Virtual memory, by instance",
                    (
                        Query(
                            f"sum by (instance) (process_memory_virtual_bytes{{{SEL}}})",
                            "{{instance}}",
                        ),
                    ),
                    "bytes",
                ),
            ),
        ),
    ),
)

HTTP = Board(
    "asyncwatch-http",
    "asyncwatch / HTTP",
    "Requests, errors and duration per route template (OpenTelemetry HTTP server conventions).",
    variables=(
        *COMMON_VARIABLES,
        Variable(
            "route",
            "http_route",
            "http_server_request_duration_seconds_count{" + SEL + "}",
            "Route",
        ),
    ),
    rows=(
        (
            "Requests",
            (
                Panel(
                    "Requests per second, by route",
                    (
                        Query(
                            "sum by (http_route) "
                            f"(rate(http_server_request_duration_seconds_count{{{ROUTE}}}{RATE}))",
                            "{{http_route}}",
                        ),
                    ),
                    "reqps",
                ),
                Panel(
                    "Server errors (5xx) ratio, by route",
                    (
                        Query(
                            "sum by (http_route) (rate(http_server_request_duration_seconds_count"
                            f'{{{ROUTE}, http_response_status_code=~"5..", {NOT_DISCONNECT}}}{RATE}))'
                            " / sum by (http_route) (rate(http_server_request_duration_seconds_count"
                            f"{{{ROUTE}, {NOT_DISCONNECT}}}{RATE}))",
                            "{{http_route}}",
                        ),
                    ),
                    "percentunit",
                ),
                Panel(
                    "Request duration p50 / p95 / p99, by route",
                    _quantiles("http_server_request_duration_seconds", "http_route", ROUTE),
                    "s",
                ),
                Panel(
                    "Responses per second, by status code",
                    (
                        Query(
                            "sum by (http_response_status_code) "
                            f"(rate(http_server_request_duration_seconds_count{{{ROUTE}}}{RATE}))",
                            "{{http_response_status_code}}",
                        ),
                    ),
                    "reqps",
                ),
                Panel(
                    "Active requests, by instance",
                    (
                        Query(
                            f"sum by (instance) (http_server_active_requests{{{SEL}}})",
                            "{{instance}}",
                        ),
                    ),
                ),
                Panel(
                    "Request and response body size p95, by route",
                    (
                        Query(
                            "histogram_quantile(0.95, sum by (http_route, le) "
                            f"(rate(http_server_request_body_size_bytes_bucket{{{ROUTE}}}{RATE})))",
                            "request {{http_route}}",
                        ),
                        Query(
                            "histogram_quantile(0.95, sum by (http_route, le) "
                            f"(rate(http_server_response_body_size_bytes_bucket{{{ROUTE}}}{RATE})))",
                            "response {{http_route}}",
                        ),
                    ),
                    "bytes",
                ),
            ),
        ),
        (
            "Tasks of requests",
            (
                Panel(
                    "Tasks created per request (mean), by route",
                    (
                        Query(
                            "sum by (http_route) "
                            f"(rate(asyncwatch_http_server_request_tasks_sum{{{ROUTE}}}{RATE}))"
                            " / sum by (http_route) "
                            f"(rate(asyncwatch_http_server_request_tasks_count{{{ROUTE}}}{RATE}))",
                            "{{http_route}}",
                        ),
                    ),
                    description="Asyncio tasks each request creates (fan-out); requests that "
                    "create none count as 0.",
                ),
                Panel(
                    "Request tasks finished per second, by outcome",
                    (
                        Query(
                            "sum by (http_route, asyncwatch_task_outcome) "
                            "(rate(asyncwatch_http_server_tasks_completed_total"
                            f"{{{ROUTE}}}{RATE}))",
                            "{{http_route}} {{asyncwatch_task_outcome}}",
                        ),
                    ),
                    "ops",
                    "Tasks created while handling requests, by how they ended (ok, error, "
                    "cancelled), including those that outlive their request.",
                ),
            ),
        ),
    ),
)

DIAGNOSIS = Board(
    "asyncwatch-diagnosis",
    "asyncwatch / Diagnosis",
    "What is wrong right now: deadlocks, stuck tasks, blocked loops, advisor suggestions, "
    "and asyncwatch's own health.",
    variables=COMMON_VARIABLES,
    rows=(
        (
            "Deadlocks, stuck and leaking tasks",
            (
                _stat(
                    "Deadlocks found",
                    f"sum(increase(asyncwatch_deadlocks_total{{{SEL}}}[$__range]))",
                    "short",
                    "Cycles of tasks waiting on each other, in the time range: asyncwatch.findings('deadlock').",
                ),
                Panel(
                    "Stuck tasks, by instance",
                    (Query(f"sum by (instance) (asyncwatch_task_stuck{{{SEL}}})", "{{instance}}"),),
                    description="Tasks waiting with nothing able to wake them: asyncwatch.findings('stuck_task').",
                ),
                Panel(
                    "Coroutines in flight that finish nothing",
                    (
                        Query(
                            f"sum by (instance, code_function_name) (asyncwatch_task_in_flight{{{SEL}}}) > 0"
                            " unless on (instance, code_function_name) sum by (instance, code_function_name) "
                            f"(rate(asyncwatch_task_completed_total{{{SEL}}}{RATE})) > 0",
                            "{{instance}} {{code_function_name}}",
                        ),
                    ),
                    description="Tasks in flight whose coroutine completed none lately: long-lived "
                    "loops and servers, or tasks stuck on an await.",
                ),
                Panel(
                    "Growth of tasks in flight per hour, by coroutine",
                    (
                        Query(
                            "sum by (instance, code_function_name) "
                            f"(deriv(asyncwatch_task_in_flight{{{SEL}}}[10m])) * 3600",
                            "{{instance}} {{code_function_name}}",
                        ),
                    ),
                    description="A lasting positive slope is a task leak: created faster than they finish.",
                ),
            ),
        ),
        (
            "Blocked event loop",
            (
                Panel(
                    "Blocked-loop events, by culprit",
                    (
                        Query(
                            f"sum by ({CULPRIT}) (increase(asyncwatch_loop_blocked_total{{{SEL}}}{RATE}))",
                            CULPRIT_LEGEND,
                        ),
                    ),
                ),
                Panel(
                    "Time blocked, by culprit",
                    (
                        Query(
                            f"sum by ({CULPRIT}) "
                            f"(rate(asyncwatch_loop_blocked_duration_seconds_sum{{{SEL}}}{RATE}))",
                            CULPRIT_LEGEND,
                        ),
                    ),
                    "percentunit",
                    "Share of wall time the loop spent held by each culprit.",
                ),
            ),
        ),
        (
            "Advisor",
            (
                Panel(
                    "Suggested vs current setting, by target and knob",
                    (
                        Query(
                            "max by (asyncwatch_advisor_target, asyncwatch_advisor_knob) "
                            f"(asyncwatch_advisor_suggested{{{SEL}}})",
                            "suggested {{asyncwatch_advisor_target}} {{asyncwatch_advisor_knob}}",
                        ),
                        Query(
                            "max by (asyncwatch_advisor_target, asyncwatch_advisor_knob) "
                            f"(asyncwatch_advisor_current{{{SEL}}})",
                            "current {{asyncwatch_advisor_target}} {{asyncwatch_advisor_knob}}",
                        ),
                    ),
                    description="asyncwatch.advise() gives the evidence and the expected gain.",
                    width=24,
                ),
            ),
        ),
        (
            "asyncwatch health",
            (
                Panel(
                    "asyncwatch internal errors per second, by hook",
                    (
                        Query(
                            "sum by (instance, asyncwatch_hook) "
                            f"(rate(asyncwatch_internal_errors_total{{{SEL}}}{RATE}))",
                            "{{instance}} {{asyncwatch_hook}}",
                        ),
                    ),
                    "ops",
                    "Errors asyncwatch caught in its own hooks (the app is unaffected); should stay empty.",
                ),
                Panel(
                    "Dropped exports per second, by signal and reason",
                    (
                        Query(
                            "sum by (instance, asyncwatch_signal, asyncwatch_reason) "
                            f"(rate(asyncwatch_export_dropped_total{{{SEL}}}{RATE}))",
                            "{{instance}} {{asyncwatch_signal}} {{asyncwatch_reason}}",
                        ),
                    ),
                    "ops",
                    "Exports or spans asyncwatch gave up on: the OTLP endpoint is down, slow or rejecting.",
                ),
            ),
        ),
    ),
)

BOARDS = (OVERVIEW, HTTP, DIAGNOSIS)


# ------------------------------------------------------------------------------ building


def _variable(v: Variable) -> QueryVariable:
    return (
        QueryVariable(v.name)
        .label(v.title)
        .datasource(DATASOURCE)
        .query(v.query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def _panel(p: Panel, panel_id: int) -> Any:
    builder: Any
    if p.kind == "stat":
        builder = StatPanel()
    else:
        builder = (
            TimeseriesPanel()
            .fill_opacity(10)
            .legend(
                VizLegendOptions()
                .display_mode(LegendDisplayMode.LIST)
                .placement(LegendPlacement.BOTTOM)
                .show_legend(True)
            )
        )
    builder = (
        builder.id(panel_id)
        .title(p.title)
        .datasource(DATASOURCE)
        .unit(p.unit)
        .span(p.width)
        .height(p.height)
        .thresholds(
            ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="green")])
        )
    )
    if p.description:
        builder = builder.description(p.description)
    for i, q in enumerate(p.queries):
        target = Dataquery().expr(q.expr).ref_id(chr(ord("A") + i))
        if q.legend:
            target = target.legend_format(q.legend)
        builder = builder.with_target(target)
    return builder


def build(board: Board) -> dict[str, Any] | None:
    """The dashboard's JSON model, or None if none of its panels is active yet."""
    rows = [(t, [p for p in panels if p.waits_for is None]) for t, panels in board.rows]
    rows = [(t, panels) for t, panels in rows if panels]
    if not rows:
        return None
    dash = (
        Dashboard(board.title)
        .uid(board.uid)
        .description(board.description)
        .tags(list(board.tags))
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for v in board.variables:
        if v.waits_for is None:
            dash = dash.with_variable(_variable(v))
    panel_id = 0
    for title, panels in rows:
        panel_id += 1
        dash = dash.with_row(Row(title).id(panel_id))
        for p in panels:
            panel_id += 1
            dash = dash.with_panel(_panel(p, panel_id))
    model: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(dash.build()))
    for var in model["templating"]["list"]:
        # the SDK fills interval-variable fields into every variable; Grafana's schema has
        # them only on interval variables
        if var["type"] != "interval":
            for key in ("auto", "auto_count", "auto_min"):
                var.pop(key, None)
    return model


def outputs() -> dict[Path, str]:
    """Every dashboard file the generator writes, and its content."""
    out = {}
    for board in BOARDS:
        model = build(board)
        if model is not None:
            out[OUT / f"{board.uid}.json"] = json.dumps(model, indent=2, sort_keys=True) + "\n"
    return out


def pending() -> list[tuple[str, str]]:
    """(waits_for, "dashboard: panel or variable") for everything not active yet."""
    out = []
    for board in BOARDS:
        out += [(v.waits_for, f"{board.title}: ${v.name}") for v in board.variables if v.waits_for]
        for row, panels in board.rows:
            out += [
                (p.waits_for, f"{board.title}: {row}: {p.title}") for p in panels if p.waits_for
            ]
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is not current")
    parser.add_argument("--pending", action="store_true", help="list what is not active yet")
    args = parser.parse_args(argv)
    if args.pending:
        for waits_for, what in pending():
            print(f"{waits_for:45}  {what}")
        return 0
    wanted = outputs()
    existing = set(OUT.glob("*.json"))
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    extra = sorted(existing - set(wanted))
    if args.check:
        if stale or extra:
            print("not current (run python grafana/generate.py):", *stale, *extra, sep="\n  ")
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.write_text(wanted[path])
    for path in extra:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
