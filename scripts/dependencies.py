"""Print asyncwatch's requirements, one per line, from pyproject.toml: the dependencies and
those of the extras named on the command line (an extra that names ``asyncwatch[...]`` is
expanded), but not asyncwatch itself.

For installing a venv's dependencies ahead of the project, without building it, e.g. while
another stage still uses the checkout (.ci/run):

    python scripts/dependencies.py all test docs > reqs.txt && python -m pip install -r reqs.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    name = project["name"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    pending = list(extras)
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"scripts/dependencies.py: no extra {extra!r} in {PYPROJECT}")
        seen.add(extra)
        for requirement in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[([^\]]*)\]", requirement.strip())
            if own:
                pending += [e.strip() for e in own.group(1).split(",") if e.strip()]
            else:
                out.append(requirement)
    return list(dict.fromkeys(out))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
