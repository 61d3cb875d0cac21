"""Where a primitive was made, as the app sees it: the first frame outside asyncio and
asyncwatch (``caller``, read once per creation, so it is kept cheap), and, only when a
finding describes the object, that site's line (``line_of``) and the variable it was
assigned to (``name_at``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from .._core.stacks import PACKAGE_DIR, source_lines

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep


def skipped_files() -> set[str]:
    """Files whose frames are not "where it was created": asyncio's and asyncwatch's."""
    out = set()
    for name, module in list(sys.modules.items()):
        if name == "asyncio" or name.startswith(("asyncio.", "asyncwatch")):
            filename = getattr(module, "__file__", None)
            if filename:
                out.add(filename)
    return out


SKIPPED: set[str] = set()
APP_FILES: set[str] = set()  # files seen not to be asyncio's or ours (bounded by the app)


def caller(frame: Any) -> tuple[Any, int] | None:
    """(code, instruction offset) of the first frame from ``frame`` outward outside asyncio
    and asyncwatch; the line number is worked out only if a finding needs it."""
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if filename in APP_FILES:
            return code, frame.f_lasti
        if filename not in SKIPPED:
            if not filename.startswith((_ASYNCIO_DIR, PACKAGE_DIR)):
                APP_FILES.add(filename)
                return code, frame.f_lasti
            SKIPPED.add(filename)
        frame = frame.f_back
    return None


def name_at(code: Any, offset: int) -> str | None:
    """The variable a primitive created at ``(code, offset)`` was assigned to, read from the
    source: ``ledger`` in ``accounts, ledger = Lock(), Lock()``, ``self.lock`` in
    ``self.lock = Lock()``. None when the call is not the whole right-hand side of a
    one-line assignment (a list of locks, a call's argument...)."""
    import ast

    try:
        positions = list(code.co_positions())
        line, end_line, col, end_col = positions[offset // 2]
    except (AttributeError, IndexError, ValueError):
        return None
    if line is None or line != end_line or col is None or end_col is None:
        return None
    lines = source_lines(code.co_filename)
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    stripped = text.lstrip()
    indent = len(text) - len(stripped)
    try:
        tree = ast.parse(stripped.rstrip())
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    stmt = tree.body[0]
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target, value = stmt.targets[0], stmt.value
    elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
        target, value = stmt.target, stmt.value
    else:
        return None
    pairs: list[tuple[ast.expr, ast.expr]] = [(target, value)]
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        if len(target.elts) != len(value.elts):
            return None
        pairs = list(zip(target.elts, value.elts, strict=True))
    for name, call in pairs:
        if (
            isinstance(call, ast.Call)
            and call.col_offset + indent == col
            and call.end_col_offset is not None
            and call.end_col_offset + indent == end_col
            and isinstance(name, ast.Name | ast.Attribute | ast.Subscript)
        ):
            return ast.unparse(name)
    return None


def line_of(code: Any, offset: int) -> int:
    """The source line of instruction ``offset`` in ``code`` (its first line if unknown)."""
    for start, stop, line in code.co_lines():
        if start <= offset < stop and line is not None:
            return int(line)
    return int(code.co_firstlineno)
