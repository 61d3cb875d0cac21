"""Regenerate the docs' configuration, metric, alert and command-line references from the code,
and their benchmark tables from benchmarks/results/*.md (``<!-- BEGIN results:NAME -->``
markers), in README.md and every page under docs/ (wherever a marker pair is).

The metric table gives each metric's Prometheus name as ``MetricDef.prometheus``, which
tests/test_names.py checks against a real /metrics page and the Collector's naming rules. The
alert table comes from exporters/generate.py's ALERTS, the table the rule files are made from.

python scripts/gen_reference.py          rewrite the pages in place
python scripts/gen_reference.py --check  exit 1 if a page is out of date (used by tests)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncwatch._core import names as _names  # noqa: E402
from asyncwatch._core.config import settings, settings_reference  # noqa: E402


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


def cli_reference() -> str:
    """Each command with its description and a table of its arguments, read from the parser
    (not argparse's help text, whose layout changes between Python versions)."""
    import argparse

    from asyncwatch import _cli

    def table(parser: argparse.ArgumentParser) -> str:
        rows = ["| argument | meaning |", "|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    rows.append(f"| `{choice.dest}` | {_cell(choice.help)} |")
                continue
            name = ", ".join(action.option_strings) or str(action.metavar or action.dest)
            if action.option_strings and action.nargs != 0:
                name += " " + str(action.metavar or action.dest.upper())
            rows.append(f"| `{name}` | {_cell(action.help)} |")
        return "\n".join(rows)

    parser = _cli._parser()
    parts = [f"### `asyncwatch`\n\n{parser.description}\n\n{table(parser)}"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                about = sub.description or next(
                    (c.help for c in action._choices_actions if c.dest == name), ""
                )
                parts.append(f"### `asyncwatch {name}`\n\n{about}\n\n{table(sub)}")
    return "\n\n".join(parts)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


SECTIONS = {
    "config-reference": config_table,
    "metrics-reference": metrics_table,
    "alerts-reference": alerts_table,
    "cli-reference": cli_reference,
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


def pages() -> list[Path]:
    """Every page that may hold a generated block: the README and the docs site's pages."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main() -> int:
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if "--check" not in sys.argv:
                page.write_text(new)
    if "--check" in sys.argv and stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"reference tables out of date in {names}: run python scripts/gen_reference.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
