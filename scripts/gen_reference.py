"""Regenerate the README's configuration, metric and alert reference tables from the code, and
its benchmark tables from benchmarks/results/*.md (``<!-- BEGIN results:NAME -->`` markers).

The metric table gives each metric's Prometheus name as ``MetricDef.prometheus``, which
tests/test_names.py checks against a real /metrics page and the Collector's naming rules. The
alert table comes from exporters/generate.py's ALERTS, the table the rule files are made from.

python scripts/gen_reference.py          rewrite README.md in place
python scripts/gen_reference.py --check  exit 1 if README.md is out of date (used by tests)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwatch import _names  # noqa: E402
from asyncwatch._config import settings, settings_reference  # noqa: E402


def config_table() -> str:
    """Built from the Config fields alone: each is declared with its variables, form and help."""
    described = settings()
    lines = [
        "| argument | environment variable | default | accepted | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, variables, default, form in settings_reference():
        envs = ", ".join(f"`{v}`" for v in variables.split(", "))
        meaning = described[name].help.replace("|", "\\|")
        lines.append(f"| `{name}` | {envs} | `{default}` | {form} | {meaning} |")
    return "\n".join(lines)


def metrics_table() -> str:
    lines = [
        "| OpenTelemetry name | Prometheus name | type | unit | attributes | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for m in _names.METRICS:
        attrs = ", ".join(f"`{a}`" for a in m.attributes) or "-"
        lines.append(
            f"| `{m.name}` | `{m.prometheus}` | {m.kind} | `{m.unit}` | {attrs} | {m.description} |"
        )
    return "\n".join(lines)


def alerts_table() -> str:
    import importlib.util

    path = ROOT / "exporters" / "generate.py"
    spec = importlib.util.spec_from_file_location("_exporters_generate", path)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen  # dataclasses look their module up there
    spec.loader.exec_module(gen)
    lines = ["| alert | severity | `for` | what it means |", "|---|---|---|---|"]
    for a in gen.ALERTS:
        if a.waits_for is None:
            when = re.sub(r"\{\{ \$labels\.(\w+) \}\}", r"`\1`", a.description)
            when = re.sub(r"\{\{ \$value[^}]*\}\}", "N", when)
            lines.append(f"| `{a.alert}` | {a.severity} | {a.for_} | {when} |")
    return "\n".join(lines)


SECTIONS = {
    "config-reference": config_table,
    "metrics-reference": metrics_table,
    "alerts-reference": alerts_table,
}
RESULTS = ROOT / "benchmarks" / "results"


def result(name: str) -> str:
    """A benchmark's latest table, as the benchmark wrote it (its header comment dropped)."""
    path = RESULTS / f"{name}.md"
    if not path.exists():
        return f"(no results yet: run the benchmark that writes benchmarks/results/{name}.md)"
    lines = path.read_text().strip().splitlines()
    return "\n".join(line for line in lines if not line.startswith("<!--"))


def render(text: str) -> str:
    for name, build in SECTIONS.items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n)(.*?)(<!-- END {name} -->)", re.DOTALL)
        text = pattern.sub(lambda m, b=build: m.group(1) + b() + "\n" + m.group(3), text)
    pattern = re.compile(
        r"(<!-- BEGIN results:([\w-]+) -->\n)(.*?)(<!-- END results:\2 -->)", re.DOTALL
    )
    return pattern.sub(lambda m: m.group(1) + result(m.group(2)) + "\n" + m.group(4), text)


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md reference tables are out of date: run python scripts/gen_reference.py")
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
