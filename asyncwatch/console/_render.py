"""Plain-text views for the console commands (pure functions: stats in, text out)."""

from __future__ import annotations

import gc
import sys
import sysconfig
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ..tasks import CoroutineStats, Stats, format_ms


def _short(text: str, width: int) -> str:
    """Cut from the left, in ASCII (telnet clients disagree about encodings)."""
    return text if len(text) <= width else ".." + text[-(width - 2) :]


_LIBRARY_DIRS = tuple(
    {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def _is_library(name: str) -> bool:
    """Whether coroutine ``name`` comes from the standard library or an installed package
    (judged by where its top-level module was loaded from)."""
    module = sys.modules.get(name.split(".", 1)[0])
    path = getattr(module, "__file__", None) if module is not None else None
    if path is None:
        return name.split(".", 1)[0] in sys.stdlib_module_names
    return path.startswith(_LIBRARY_DIRS) or "site-packages" in path


def rate_of(before: Stats | None, now: Stats, dt: float) -> dict[str, float | None]:
    if before is None or dt <= 0:
        return dict.fromkeys(now.coroutines)
    rates: dict[str, float | None] = {}
    for name, c in now.coroutines.items():
        old = before.coroutines.get(name)
        rates[name] = (c.created - (old.created if old else 0)) / dt
    return rates


def render_top(
    now: Stats, rates: Mapping[str, float | None], *, sort: str = "rate", limit: int = 20
) -> str:
    """The ``top`` table: one row per coroutine, sorted by ``sort`` (highest first)."""

    def key(c: CoroutineStats) -> Any:
        if sort == "name":
            return c.name
        if sort == "rate":
            main: Any = rates.get(c.name) or 0.0
        elif sort in ("p50", "p95", "p99"):
            main = getattr(c.duration, sort) or 0.0
        else:
            main = getattr(c, sort)
        # Ties (typically many long-lived coroutines at 0 created/s) used to keep first-seen
        # order, so a server library's coroutines started before the app's pushed the app's
        # own out of `top -n 5`: break them by tasks in flight, then the app's code before
        # libraries', then tasks created.
        return (main, c.in_flight, not _is_library(c.name), c.created)

    rows = sorted(now.coroutines.values(), key=key, reverse=sort != "name")[:limit]
    head = (
        f"{'coroutine':<44} {'flight':>7} {'created/s':>10} {'created':>9} {'p50':>8} "
        f"{'p95':>8} {'p99':>8} {'errors':>7} {'cancel':>7}"
    )
    lines = [
        f"{len(now.coroutines)} coroutines, {now.in_flight} tasks in flight, sorted by {sort}",
        head,
        "-" * len(head),
    ]
    for c in rows:
        rate = rates.get(c.name)
        lines.append(
            f"{_short(c.name, 44):<44} {c.in_flight:>7} "
            f"{'-' if rate is None else f'{rate:.1f}':>10} {c.created:>9} "
            f"{format_ms(c.duration.p50):>8} {format_ms(c.duration.p95):>8} "
            f"{format_ms(c.duration.p99):>8} "
            f"{c.errors:>7} {c.cancelled:>7}"
        )
    return "\n".join(lines)


def render_http(
    routes: Iterable[Mapping[str, Any]],
    rates: Mapping[tuple[str, str], float | None],
    *,
    sort: str = "rate",
    limit: int = 20,
) -> str:
    """The ``http`` table: one row per (method, route)."""
    rows = list(routes)

    def key(r: Mapping[str, Any]) -> Any:
        if sort == "route":
            return str(r.get("route", ""))
        if sort == "rate":
            return rates.get((str(r.get("method", "")), str(r.get("route", "")))) or 0.0
        return r.get(sort) or 0

    rows.sort(key=key, reverse=sort != "route")
    head = (
        f"{'method':<7} {'route':<40} {'req/s':>8} {'requests':>9} {'errors':>7} "
        f"{'flight':>7} {'p50':>8} {'p95':>8} {'p99':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows[:limit]:
        method, route = str(r.get("method", "")), str(r.get("route", ""))
        rate = rates.get((method, route))
        lines.append(
            f"{method:<7} {_short(route, 40):<40} "
            f"{'-' if rate is None else f'{rate:.1f}':>8} {r.get('requests', 0):>9} "
            f"{r.get('errors', 0):>7} {r.get('in_flight', 0):>7} {format_ms(r.get('p50')):>8} "
            f"{format_ms(r.get('p95')):>8} {format_ms(r.get('p99')):>8}"
        )
    return "\n".join(lines)


def _frame_text(value: Any) -> str | None:
    """``file:line in function`` for a Frame or a frame-shaped mapping, else None."""
    if isinstance(value, Mapping) and {"filename", "lineno"} <= set(value):
        text = f"{value['filename']}:{value['lineno']}"
        if value.get("function"):
            text += f" in {value['function']}"
        if value.get("line"):
            text += f"\n      {str(value['line']).strip()}"
        return text
    return None


def _render_value(name: str, value: Any, out: list[str], indent: str = "  ") -> None:
    frame = _frame_text(value)
    if frame is not None:
        out.append(f"{indent}{name}: {frame}")
    elif isinstance(value, list | tuple) and value and all(_frame_text(v) for v in value):
        out.append(f"{indent}{name} (most recent call last):")
        out.extend(f"{indent}  {_frame_text(v)}" for v in value)
    elif isinstance(value, list | tuple) and value and all(
        isinstance(v, list | tuple) for v in value
    ):
        out.append(f"{indent}{name}:")
        for i, item in enumerate(value):
            _render_value(f"[{i}]", item, out, indent + "  ")
    elif isinstance(value, Mapping) and value:
        out.append(f"{indent}{name}:")
        for k, v in value.items():
            _render_value(str(k), v, out, indent + "  ")
    elif isinstance(value, float):
        out.append(f"{indent}{name}: {value:.4g}")
    elif value not in (None, "", (), [], {}):
        out.append(f"{indent}{name}: {value}")


_FIRST = ("summary", "duration_s", "culprit", "task", "route", "explanation", "tasks")


def render_finding(finding: Any, *, stack: bool = True) -> str:
    """One finding, any kind: its fields in a readable order (known ones first)."""
    data = finding.as_dict() if hasattr(finding, "as_dict") else dict(vars(finding))
    when = time.strftime("%H:%M:%S", time.localtime(data.pop("started_at", time.time())))
    kind = data.pop("kind", type(finding).__name__)
    out = [f"[{when}] {kind}"]
    count = data.pop("count", 1)
    first_seen = data.pop("first_seen", 0.0)
    data.pop("last_seen", None)
    worst, typical = data.pop("worst_s", None), data.pop("typical_s", None)
    exemplars = data.pop("exemplars", ()) or ()
    for name in _FIRST:
        if name in data:
            _render_value(name, data.pop(name), out)
    if isinstance(count, int) and count > 1:
        line = f"  seen {count} times"
        if first_seen:
            line += f" since {time.strftime('%H:%M:%S', time.localtime(first_seen))}"
        if worst is not None and typical is not None:
            line += f"; worst {worst:.3f} s, typical {typical:.3f} s"
        out.append(line)
        if stack and len(exemplars) > 1:
            out.append(f"  {len(exemplars)} distinct stacks; the others:")
            shown = data.get("stack")
            for other in exemplars:
                if other == shown:
                    continue
                out.append("    ---")
                out.extend(f"    {_frame_text(f) or f}" for f in other)
    # Await chains and locks (deadlock and stuck-task findings) read best in their own words.
    chains = getattr(finding, "chains", None)
    if chains and all(callable(getattr(c, "format", None)) for c in chains) and "chains" in data:
        del data["chains"]
        if stack:
            out.append("  await chains (outermost first):")
            out.extend("    " + line for c in chains for line in c.format().splitlines())
        else:
            out.append(f"  await chains: {len(chains)} (--stack to show)")
    locks = getattr(finding, "locks", None)
    if locks and all(getattr(lk, "description", None) for lk in locks) and "locks" in data:
        del data["locks"]
        out.append("  locks:")
        for lk in locks:
            held = ", ".join(f"'{t}'" for t in getattr(lk, "held_by", ()) or ())
            out.append(f"    {lk.description}" + (f", held by {held}" if held else ""))
    for name in [k for k in data if k.endswith("_at") and isinstance(data[k], float)]:
        out.append(f"  {name}: {time.strftime('%H:%M:%S', time.localtime(data.pop(name)))}")
    for name, value in data.items():
        if not stack and isinstance(value, list | tuple) and value and all(
            _frame_text(v) or isinstance(v, list | tuple) for v in value
        ):
            out.append(f"  {name}: {len(value)} entries (--stack to show)")
            continue
        _render_value(name, value, out)
    return "\n".join(out)


def render_memory(stats: Stats, *, attribution: bool, limit: int = 15) -> str:
    """Process memory, GC and, if on, live bytes per coroutine."""
    p = stats.process
    mib = 1024 * 1024
    lines = [
        f"rss {p.rss_bytes / mib:.1f} MiB" if p.rss_bytes is not None else "rss -",
        f"uss {p.uss_bytes / mib:.1f} MiB" if p.uss_bytes is not None else "uss -",
        f"threads {p.threads if p.threads is not None else '-'}",
        "gc collections per generation: " + " / ".join(str(n) for n in p.gc_collections),
        "gc objects pending per generation: " + " / ".join(str(n) for n in gc.get_count()),
        f"gc.garbage (uncollectable): {len(gc.garbage)}",
    ]
    if not attribution:
        lines.append("per-coroutine attribution off (memory_attribution=True turns it on)")
        return "\n".join(lines)
    owned = sorted(
        (c for c in stats.coroutines.values() if c.memory_bytes),
        key=lambda c: c.memory_bytes or 0,
        reverse=True,
    )
    lines.append(f"live memory per coroutine ({len(owned)} with any), tracemalloc:")
    for c in owned[:limit]:
        lines.append(f"  {_short(c.name, 56):<56} {(c.memory_bytes or 0) / 1024:>10.1f} KiB")
    return "\n".join(lines)
