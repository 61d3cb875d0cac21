"""The package's layout rule, checked on the source (an ast walk, every import counted: at
module level, inside functions and under ``TYPE_CHECKING``).

- ``asyncwatch/_core`` imports nothing of asyncwatch outside ``_core``.
- A subsystem (``tasks``, ``asgi``, ...) imports ``_core``, its own modules, and the public
  face (the package itself, never an underscore module) of the subsystems ``USES`` lists for
  it; never the Watch, the root package or another subsystem's internals. What a subsystem
  needs from the running Watch is passed in when the Watch builds it.
- Only the root modules (the Watch, the public API, the CLI, the test helpers) wire
  subsystems together.
- No module is over 600 lines.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "asyncwatch"
CORE = "_core"
SUBSYSTEMS = frozenset(
    {"tasks", "asgi", "otel", "loopwatch", "sync", "deadlock", "advisor", "profiler", "console"}
)
# subsystem -> the subsystems whose public face (package ``__init__``) it may import
USES: dict[str, frozenset[str]] = {
    "asgi": frozenset({"tasks"}),  # the request's task counters are TaskStats
    "console": frozenset({"tasks"}),  # renders the Stats snapshot
    "deadlock": frozenset({"sync"}),  # reads who holds and who waits
    "advisor": frozenset({"sync"}),  # reads semaphore and queue state
}
MAX_LINES = 600
# root-level code that happens to be a package: the ``asyncwatch run`` bootstrap
ROOT_PACKAGES = frozenset({"_bootstrap"})


def _modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _dotted(path: pathlib.Path) -> tuple[list[str], bool]:
    """The module's dotted parts inside the package, and whether it is a package."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        return parts[:-1], True
    return parts, False


def _imports(path: pathlib.Path) -> list[tuple[int, list[str]]]:
    """(line, target parts inside asyncwatch) for every import of asyncwatch in ``path``.

    ``from X import name`` counts as an import of ``X.name`` when ``X.name`` is a module or
    package, else of ``X``.
    """
    parts, is_pkg = _dotted(path)
    package = parts if is_pkg else parts[:-1]
    out: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "asyncwatch":
                    out.append((node.lineno, names[1:]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above the package")
                base = package[: len(package) - (node.level - 1)]
            elif node.module and node.module.split(".")[0] == "asyncwatch":
                base = []
            else:
                continue
            target = base + (node.module.split(".")[1:] if not node.level and node.module
                             else (node.module.split(".") if node.module else []))
            for alias in node.names:
                sub = PACKAGE.joinpath(*target, alias.name)
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    out.append((node.lineno, [*target, alias.name]))
                else:
                    out.append((node.lineno, target))
    return out


def _problem(module: list[str], target: list[str]) -> str | None:
    """Why ``module`` may not import ``target`` (both dotted parts inside asyncwatch), or None."""
    home = module[0] if len(module) > 1 else None  # None: a root module
    if home is None or home in ROOT_PACKAGES:
        return None  # the root wires
    if not target:
        return "imports the root package"
    top = target[0]
    if top == CORE:
        return None
    if home == CORE:
        return f"_core imports {'.'.join(target)}"
    if top == home:
        return None
    if top not in SUBSYSTEMS:
        return f"imports {'.'.join(target)} (the root modules wire; nothing imports them)"
    if len(target) > 1:
        return f"imports {'.'.join(target)}, another subsystem's internals"
    if top not in USES.get(home, ()):
        return f"imports subsystem {top}, which USES does not list for {home}"
    return None


def test_every_directory_is_core_or_a_known_subsystem() -> None:
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert found - ROOT_PACKAGES == SUBSYSTEMS | {CORE}


def test_subsystems_import_core_their_own_and_listed_public_faces() -> None:
    problems = []
    for path in _modules():
        module, _ = _dotted(path)
        for line, target in _imports(path):
            why = _problem(module, target)
            if why:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {why}")
    assert problems == []


def test_the_uses_table_has_no_cycle() -> None:
    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
            for nxt in USES.get(start, ())
        )

    assert [s for s in SUBSYSTEMS if reaches(s, s)] == []


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        (["tasks", "_hook"], ["_core", "names"], True),
        (["tasks", "_hook"], ["tasks", "_recorder"], True),
        (["deadlock", "_detector"], ["sync"], True),
        (["deadlock", "_detector"], ["sync", "_tracker"], False),
        (["advisor", "_advisor"], ["_watch"], False),
        (["console", "_commands"], ["advisor"], False),
        (["asgi", "_middleware"], [], False),
        (["_core", "config"], ["tasks"], False),
        (["_watch"], ["deadlock", "_detector"], True),
    ],
)
def test_the_rule_itself(module: list[str], target: list[str], allowed: bool) -> None:
    """The checker flags what it should (so the layout test above can fail)."""
    assert (_problem(module, target) is None) is allowed
