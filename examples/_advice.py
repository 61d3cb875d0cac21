"""Shared by the advisor examples: install, run a workload, print the advice."""

from __future__ import annotations

import asyncwatch


def install() -> asyncwatch.Watch:
    """asyncwatch with no exporter and on-demand advice (the examples print it)."""
    return asyncwatch.install(metrics_exporters=("none",), advisor_interval_s=3600)


def show(title: str, recs: list[asyncwatch.Recommendation]) -> None:
    """Print the advice like the console does."""
    from asyncwatch.advisor._advisor import render

    print(f"--- {title}")
    print(render(recs))


def advice_for(prefix: str) -> list[asyncwatch.Recommendation]:
    """The recommendations whose target starts with ``prefix``."""
    return [r for r in asyncwatch.advise() if r.target.startswith(prefix)]
