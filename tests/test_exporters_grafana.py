"""exporters/ and grafana/: checked by promtool, Grafana's schema and a real Prometheus.

Needs Debian's ``prometheus`` package (promtool and the server) and the npm packages in
tests/grafana-schema (``npm ci --prefix tests/grafana-schema``); ``./scripts/test`` installs
both.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from asyncwatch._core import names as _names

from .conftest import ROOT, free_port, python_env, wait_for

EXPORTERS = ROOT / "exporters"
PROMETHEUS = EXPORTERS / "prometheus"
RULES = PROMETHEUS / "rules"
ACTIVE_RULE_FILES = sorted(RULES.glob("*.yml"))
PENDING_RULE_FILES = sorted((RULES / "pending").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
SCHEMA_DIR = ROOT / "tests" / "grafana-schema"
EXAMPLE = ROOT / "examples" / "dashboard_load.py"

# Grafana's own variables, as they expand for a 1 s scrape interval (the integration test's)
GRAFANA_BUILTINS = {"$__rate_interval": "4s", "$__range": "1m", "$__interval": "1s"}


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_gen_{path.parent.name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


RULES_GEN = _load(EXPORTERS / "generate.py")
GRAFANA_GEN = _load(ROOT / "grafana" / "generate.py")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install prometheus (./scripts/test does)")
    return path


def _start_prometheus(tmp_path: Path, port: int, out: Any) -> subprocess.Popen[bytes]:
    """A real Prometheus on 127.0.0.1:``port`` with ``tmp_path``/prometheus.yml, its data in
    ``tmp_path``/data and its log to ``out``."""
    return subprocess.Popen(
        [
            _tool("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


# ------------------------------------------------------------------------ PromQL helpers


def exported_names() -> set[str]:
    """Every series name asyncwatch's Prometheus exposition can contain."""
    names = {"target_info"}
    for m in _names.METRICS:
        names.add(m.prometheus)
        if m.kind == "histogram":
            names.update(m.prometheus + s for s in ("_bucket", "_sum", "_count"))
    return names


def expand_builtins(expr: str) -> str:
    for var, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(var, value)
    return expr


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (parsed, not pattern-matched)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if name is None:
                name = next(m.value for m in node.matchers.matchers if m.name == "__name__")
            names.add(name)

    promql_parser.walk(promql_parser.parse(expand_builtins(expr)), visit)
    return names


def label_values_query(query: str) -> tuple[str, str]:
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
    assert match, query
    return match.group(1), match.group(2)


def dashboard_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    out = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def dashboard_variables(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in model["templating"]["list"] if v["type"] == "query"]


def rule_exprs(paths: list[Path]) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("record") or rule["alert"], rule["expr"]))
    return out


# ------------------------------------------------------------------------ generated files


def test_rule_files_are_the_generators_output() -> None:
    """The committed rule files are exactly what exporters/generate.py writes."""
    for path, text in RULES_GEN.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run python exporters/generate.py"


def test_dashboards_are_the_generators_output() -> None:
    """The committed dashboards are exactly what grafana/generate.py writes, and no others."""
    wanted = GRAFANA_GEN.outputs()
    assert set(wanted) == set(DASHBOARDS), "run python grafana/generate.py"
    for path, text in wanted.items():
        assert path.read_text() == text, f"{path} is stale: run python grafana/generate.py"


# ------------------------------------------------------------------------ metric names


def test_every_metric_a_dashboard_or_rule_queries_is_exported() -> None:
    """Dashboards (panels and variables) and active rules query only asyncwatch's metrics."""
    recorded = {name for name, _ in rule_exprs(ACTIVE_RULE_FILES) if ":" in name}
    allowed = exported_names() | recorded
    used: dict[str, set[str]] = {}
    for path in DASHBOARDS:
        model = json.loads(path.read_text())
        for title, expr in dashboard_queries(model):
            used[f"{path.name}: {title}"] = metric_names(expr)
        for var in dashboard_variables(model):
            selector, _ = label_values_query(var["query"])
            used[f"{path.name}: ${var['name']}"] = metric_names(selector)
    for name, expr in rule_exprs(ACTIVE_RULE_FILES):
        used[f"rule {name}"] = metric_names(expr)
    assert len(used) > 40
    unknown = {where: sorted(names - allowed) for where, names in used.items() if names - allowed}
    assert not unknown, f"not exported by asyncwatch (asyncwatch/_core/names.py): {unknown}"


def _pending_items() -> list[tuple[str, str, str]]:
    """(what, waits_for, PromQL) for every pending panel, variable and rule."""
    items = []
    for board in GRAFANA_GEN.BOARDS:
        for _, panels in board.rows:
            for p in panels:
                if p.waits_for:
                    items.extend((f"panel {p.title!r}", p.waits_for, q.expr) for q in p.queries)
        for v in board.variables:
            if v.waits_for:
                items.append((f"variable ${v.name}", v.waits_for, v.selector))
    for r in [*RULES_GEN.RECORDING, *RULES_GEN.ALERTS]:
        if r.waits_for:
            items.append((f"rule {getattr(r, 'record', None) or r.alert}", r.waits_for, r.expr))
    return items


def test_pending_panels_and_rules_still_wait_for_missing_metrics() -> None:
    """A pending item whose metrics all exist now must be activated (delete its waits_for)."""
    exported = exported_names()
    items = _pending_items()
    if not items:
        pytest.skip("nothing is pending any more")
    ready = [
        f"{what} ({waits}): delete its waits_for line and regenerate"
        for what, waits, expr in items
        if metric_names(expr) <= exported
    ]
    assert not ready, "metrics have landed in asyncwatch/_core/names.py:\n" + "\n".join(ready)


def test_metric_name_extraction_sees_through_promql() -> None:
    """The parser finds names in nested calls, binary operators and __name__ matchers."""
    expr = (
        'sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])) / on () group_left '
        'b_total unless {__name__="c"} offset 5m'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


# ------------------------------------------------------------------------ promtool


def test_promtool_accepts_every_prometheus_config() -> None:
    """promtool check config passes for each scrape config (and the rule files it loads)."""
    configs = sorted(PROMETHEUS.glob("prometheus*.yml"))
    assert len(configs) == 3
    for config in configs:
        result = subprocess.run(
            [_tool("promtool"), "check", "config", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_every_rule_file() -> None:
    """promtool check rules passes for the active and the pending rule files."""
    files = [*ACTIVE_RULE_FILES, *PENDING_RULE_FILES]
    assert len(files) == 4
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    """promtool test rules: every alert fires when it should and stays quiet otherwise."""
    tests = sorted((PROMETHEUS / "tests").glob("*.yml"))
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", *map(str, tests)],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROMETHEUS / "tests",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", "".join(t.read_text() for t in tests)))
    alerts = {a.alert for a in RULES_GEN.ALERTS}
    assert alerts <= tested, f"alerts without a unit test: {sorted(alerts - tested)}"


# ------------------------------------------------------------------------ OTel Collector


# Components of the OpenTelemetry Collector's core distribution (otelcol) used here.
CORE_COMPONENTS = {
    "receivers": {"otlp"},
    "processors": {"batch", "memory_limiter"},
    "exporters": {"otlp", "otlphttp", "prometheus", "prometheusremotewrite", "debug"},
}


@pytest.mark.parametrize("name", ["otel-collector.yaml", "otel-collector-remote-write.yaml"])
def test_collector_config_is_wired_and_listens_on_loopback(name: str) -> None:
    """Pipelines use only declared core components, all of them, and receivers bind loopback."""
    config = yaml.safe_load((EXPORTERS / "otel-collector" / name).read_text())
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"metrics", "traces"}
    for kind, allowed in CORE_COMPONENTS.items():
        declared = set(config[kind])
        used = {c for p in pipelines.values() for c in p[kind]}
        assert used == declared, (kind, used, declared)
        assert {c.split("/")[0] for c in declared} <= allowed, declared
    assert pipelines["metrics"]["exporters"][0].startswith("prometheus")
    assert pipelines["traces"]["exporters"] == ["otlp/traces"]
    for protocol in config["receivers"]["otlp"]["protocols"].values():
        assert protocol["endpoint"].startswith("${env:OTELCOL_LISTEN_HOST:-127.0.0.1}:")
    if "prometheus" in config["exporters"]:
        assert config["exporters"]["prometheus"]["endpoint"].startswith("127.0.0.1:")


# ------------------------------------------------------------------------ Grafana


def test_dashboards_are_templated_by_datasource_service_job_and_instance() -> None:
    """Every panel uses the datasource variable; every query filters by job and instance."""
    assert {p.name for p in DASHBOARDS} >= {"asyncwatch-overview.json", "asyncwatch-diagnosis.json"}
    for path in DASHBOARDS:
        model = json.loads(path.read_text())
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert {"service", "job", "instance"} <= set(variables)
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), path
        for panel in model["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert refs, panel["title"]
            assert all(refs), panel["title"]
            assert len(refs) == len(set(refs)), panel["title"]
            for target in panel["targets"]:
                assert 'job=~"$job", instance=~"$instance"' in target["expr"], panel["title"]


def test_dashboards_match_grafanas_schema() -> None:
    """tsc accepts each dashboard as @grafana/schema's Dashboard (and panel options), and
    rejects a broken control copy."""
    tsc = SCHEMA_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists() or shutil.which("node") is None:
        pytest.fail("run npm ci --prefix tests/grafana-schema (./scripts/test does)")
    work = SCHEMA_DIR / ".check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    files = []
    for path in DASHBOARDS:
        model = json.loads(path.read_text())
        files.append(_schema_module(work / f"{path.stem}.ts", model))
    broken = json.loads(DASHBOARDS[0].read_text())
    broken["panels"][1]["gridPos"]["depth"] = 1  # unknown field
    broken["panels"][1]["fieldConfig"]["defaults"]["thresholds"]["mode"] = "relative"
    broken["graphTooltip"] = "shared"  # wrong type
    control = _schema_module(work / "control.ts", broken)
    (work / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "module": "esnext",
                    "target": "es2022",
                    "moduleResolution": "bundler",
                    "skipLibCheck": True,
                    "types": [],
                    "paths": {"grafana-schema/*": ["../node_modules/@grafana/schema/dist/esm/*"]},
                },
                "files": [f.name for f in [*files, control]],
            }
        )
    )
    result = subprocess.run(
        ["node", str(tsc), "-p", str(work / "tsconfig.json")],
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
        cwd=work,
    )
    errors = [line for line in result.stdout.splitlines() if "error TS" in line]
    ours = [e for e in errors if not e.startswith("control.ts")]
    assert not ours, "\n".join(ours)
    assert len([e for e in errors if e.startswith("control.ts")]) == 3, result.stdout
    shutil.rmtree(work, ignore_errors=True)


_PANEL_TYPES = {
    "timeseries": ("timeseries", "TimeSeriesPanelCfg_types.gen", True),
    "stat": ("stat", "StatPanelCfg_types.gen", False),
}


def _schema_module(path: Path, model: dict[str, Any]) -> Path:
    """A TypeScript module that assigns the JSON to Grafana's types (enums as their values)."""
    lines = [
        'import type { Dashboard } from "grafana-schema/raw/dashboard/x/dashboard_types.gen";',
        *(
            f'import type * as {name} from "grafana-schema/raw/composable/{name}/panelcfg/x/{mod}";'
            for name, mod, _ in _PANEL_TYPES.values()
        ),
        # JSON carries enum values, not TypeScript enum members: map each enum to its values
        "type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined"
        " ? T : T extends Array<infer U> ? Array<Json<U>> : T extends object"
        " ? { [K in keyof T]: Json<T[K]> } : T;",
        f"export const dashboard: Json<Dashboard> = {json.dumps(model)};",
    ]
    for panel in model["panels"]:
        if panel["type"] == "row":
            continue
        name, _, has_custom = _PANEL_TYPES[panel["type"]]
        pid = panel["id"]
        options = json.dumps(panel.get("options", {}))
        lines.append(f"export const options{pid}: Json<Partial<{name}.Options>> = {options};")
        if has_custom:
            custom = json.dumps(panel["fieldConfig"]["defaults"].get("custom", {}))
            lines.append(f"export const custom{pid}: Json<Partial<{name}.FieldConfig>> = {custom};")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    """The provisioning files are Grafana's format; the scrape interval matches Prometheus's."""
    prov = ROOT / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "asyncwatch.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http://127.0.0.1:")
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["global"]
    assert source["jsonData"]["timeInterval"] == scrape["scrape_interval"]
    dash = yaml.safe_load((prov / "dashboards" / "asyncwatch.yaml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


# ------------------------------------------------------------------------ real Prometheus


class PrometheusAPI:
    """The few HTTP API calls the test needs."""

    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready(self) -> bool:
        try:
            return self.client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def label_values(self, label: str, selector: str) -> list[str]:
        return sorted(self.get(f"/api/v1/label/{label}/values", **{"match[]": selector}))

    def has_data(self, expr: str) -> bool:
        """True if the range query over the last minute has a finite value."""
        now = time.time()
        data = self.get("/api/v1/query_range", query=expr, start=now - 60, end=now, step=1)
        return any(
            math.isfinite(float(v)) for series in data["result"] for _, v in series["values"]
        )


def _regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana writes it into a =~ matcher."""
    escaped = [re.escape(v).replace("\\", "\\\\") for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _resolve_variables(
    api: PrometheusAPI, variables: list[dict[str, Any]]
) -> dict[str, str] | None:
    """Values for every variable with "All" selected, in order (as Grafana would), or None."""
    values: dict[str, str] = {}
    for var in variables:
        selector, label = label_values_query(var["query"])
        found = api.label_values(label, _substitute(selector, values))
        if not found:
            return None
        values[var["name"]] = _regex_value(found)
    return values


def _substitute(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    return expand_builtins(expr)


def _start_app(port: int, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--seconds", "100", *args],
            env=python_env(
                ASYNCWATCH_PROMETHEUS_PORT=str(port), OTEL_SERVICE_NAME="dashboard-load", **env
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[PrometheusAPI, list[int]]]:
    """examples/dashboard_load.py under load, scraped every second by a real Prometheus.

    A second, slower-paced copy has per-coroutine memory attribution on: tracemalloc makes
    its /metrics answer take about a second, so it gets its own job with a longer interval.
    """
    ports = [free_port(), free_port()]
    prom_port = free_port()
    apps = [
        _start_app(ports[0], tmp_path / "app.log", "--inject-faults"),
        _start_app(
            ports[1],
            tmp_path / "app-memory.log",
            "--pause",
            "0.2",
            ASYNCWATCH_MEMORY_ATTRIBUTION="1",
            ASYNCWATCH_MEMORY_INTERVAL_S="1",
        ),
    ]
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in ACTIVE_RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "dashboard-load",
                "static_configs": [{"targets": [f"127.0.0.1:{ports[0]}"]}],
            },
            {
                "job_name": "dashboard-load-memory",
                "scrape_interval": "5s",
                "scrape_timeout": "5s",
                "static_configs": [{"targets": [f"127.0.0.1:{ports[1]}"]}],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "prometheus.log").open("w") as out:
        prom = _start_prometheus(tmp_path, prom_port, out)
    api = PrometheusAPI(prom_port)
    try:
        wait_for(api.ready, 30, "Prometheus to be ready")
        yield api, ports
    finally:
        for proc in (prom, *apps):
            proc.terminate()
        for proc in (prom, *apps):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        api.client.close()
        for log in ("app.log", "app-memory.log", "prometheus.log"):
            sys.stderr.write(f"--- {log} (tail)\n{(tmp_path / log).read_text()[-2000:]}\n")


@pytest.mark.slow
def test_every_panel_query_and_recording_rule_returns_data(
    running: tuple[PrometheusAPI, list[int]],
) -> None:
    """Against a real Prometheus scraping the example app: every dashboard query (variables
    resolved as Grafana would) and every recording rule returns data; all rules are healthy."""
    api, ports = running
    boards = {b["uid"]: b for b in (json.loads(p.read_text()) for p in DASHBOARDS)}
    # (dashboard uid or None for a rule, what, PromQL) still to see data for
    wanted = {
        (None, f"recording rule {name}", f'{{__name__="{name}"}}')
        for name, _ in rule_exprs(ACTIVE_RULE_FILES)
        if ":" in name
    }
    for uid, board in boards.items():
        wanted.update((uid, title, expr) for title, expr in dashboard_queries(board))
    resolved: dict[str, dict[str, str] | None] = {}

    def all_have_data() -> bool:
        # variables are resolved afresh each time, as Grafana does on every refresh
        for uid, board in boards.items():
            resolved[uid] = _resolve_variables(api, dashboard_variables(board))
        for item in list(wanted):
            uid, _, expr = item
            values = {} if uid is None else resolved[uid]
            if values is not None and api.has_data(_substitute(expr, values)):
                wanted.discard(item)
        return not wanted

    try:
        wait_for(all_have_data, 60, "every query to return data")
    except AssertionError:
        missing = "\n".join(f"{uid}: {what}: {expr}" for uid, what, expr in sorted(wanted, key=str))
        pytest.fail(f"no data for:\n{missing}\nvariables: {resolved}")
    overview = resolved["asyncwatch-overview"]
    assert overview is not None
    assert overview["service"] == "dashboard\\\\-load"
    assert "wait_for_approval" in overview["coroutine"]
    # both apps (two jobs, two instances) are reached through the chained variables
    assert overview["instance"] == _regex_value(sorted(f"127.0.0.1:{p}" for p in ports))
    groups = api.get("/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == len(rule_exprs(ACTIVE_RULE_FILES))
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy


@pytest.mark.slow
def test_no_alert_is_pending_or_firing_on_a_fresh_healthy_process(tmp_path: Path) -> None:
    """A real Prometheus evaluating the active rules every second against a fresh, healthy
    ``asyncwatch run -- uvicorn examples.hello_asgi:app`` serving light traffic: across many
    evaluations after the first scrape, /api/v1/alerts lists no alert, pending or firing.
    (Before the fix, AsyncwatchDeadlockFound fired, critical, on the very first evaluation: the
    deadlock counter is exported at 0 and was "new" for 15 minutes.)"""
    bindir = Path(sys.executable).parent
    app_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    app_log, prom_log = tmp_path / "app.log", tmp_path / "prometheus.log"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in ACTIVE_RULE_FILES],
        "scrape_configs": [
            {
                "job_name": "hello",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with app_log.open("w") as app_out, prom_log.open("w") as prom_out:
        app = subprocess.Popen(
            [
                str(bindir / "asyncwatch"),
                "run",
                "--",
                str(bindir / "uvicorn"),
                "examples.hello_asgi:app",
                "--port",
                str(app_port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=python_env(ASYNCWATCH_PROMETHEUS_PORT=str(metrics_port)),
            stdout=app_out,
            stderr=subprocess.STDOUT,
        )
        prom = _start_prometheus(tmp_path, prom_port, prom_out)
    api = PrometheusAPI(prom_port)
    traffic = httpx.Client(base_url=f"http://127.0.0.1:{app_port}", timeout=10)
    try:
        wait_for(api.ready, 30, "Prometheus to be ready")

        def no_alerts() -> None:
            alerts = api.get("/api/v1/alerts")["alerts"]
            assert alerts == [], alerts

        def request() -> None:
            try:
                assert traffic.get("/").status_code == 200
            except httpx.TransportError:
                assert app.poll() is None, app_log.read_text()

        def scraped() -> float | None:
            """When the counters the restart-unsafe rules queried are first seen at 0."""
            request()
            no_alerts()
            result = api.get("/api/v1/query", query="asyncwatch_deadlocks_total")["result"]
            if not result:
                return None
            assert [float(s["value"][1]) for s in result] == [0.0]
            return float(result[0]["value"][0])

        first_seen = wait_for(scraped, 60, "the first scrape of the fresh process")
        evaluations: set[str] = set()

        def evaluated_enough() -> bool:
            """Eight evaluations of the alert group after the counters were seen."""
            request()
            no_alerts()
            for group in api.get("/api/v1/rules", type="alert")["groups"]:
                last = group["lastEvaluation"]
                if _rfc3339(last) > first_seen:
                    evaluations.add(last)
            return len(evaluations) >= 8

        wait_for(evaluated_enough, 60, "eight rule evaluations")
        no_alerts()
        rules = [r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]]
        assert rules
        assert all(r["health"] == "ok" for r in rules), rules
    finally:
        traffic.close()
        for proc in (prom, app):
            proc.terminate()
        for proc in (prom, app):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        api.client.close()
        for log in (app_log, prom_log):
            sys.stderr.write(f"--- {log.name} (tail)\n{log.read_text()[-2000:]}\n")


def _rfc3339(stamp: str) -> float:
    """Prometheus's lastEvaluation (RFC 3339, nanoseconds) as a Unix time."""
    return datetime.fromisoformat(stamp).timestamp()
