"""Checks that the decision core reads no clock: ``python -m neuronplace.local.purity placement``.

``neuronplace.placement`` decides from its arguments alone, and the time is one of them: callers
(the operator, the CLI, the tests) read the clock and pass it in. That keeps every decision
deterministic, replayable and testable with a fixed time, and keeps "when" out of code that is
about "where". Import contracts cannot say this (``datetime`` is fine to import for its types and
arithmetic), so this walks the syntax tree instead.

Flagged: any use (a call, or a reference passed on to be called later) of ``time.time``,
``time.time_ns``, ``time.monotonic``, ``time.monotonic_ns``, ``time.perf_counter``,
``time.perf_counter_ns``, ``datetime.datetime.now``, ``datetime.datetime.utcnow``,
``datetime.datetime.today`` and ``datetime.date.today``, however the module or the name was
imported (``import time``, ``from time import time``, ``import datetime as dt``,
``from datetime import datetime``). Names are resolved per file, not per scope: a local variable
that shadows an imported name is taken for the import (a false alarm, never a miss).

Prints ``path:line: message`` per finding and exits 1 when there is any, else 0.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

CLOCKS = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "time.perf_counter_ns",
        "datetime.datetime.now",
        "datetime.datetime.utcnow",
        "datetime.datetime.today",
        "datetime.date.today",
    }
)


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Each name the file binds by an import → the dotted name it stands for."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b` binds `a`; `import a.b as c` binds `c` to `a.b`.
                bound = alias.asname or alias.name.split(".")[0]
                names[bound] = alias.name if alias.asname else bound
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, names: dict[str, str]) -> str | None:
    """The dotted name ``node`` (a name or an attribute chain) refers to, imports resolved."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, names)
        return f"{base}.{node.attr}" if base else None
    return None


def check_source(source: str, path: str) -> list[str]:
    """The ``path:line: message`` findings of one file's source."""
    tree = ast.parse(source, filename=path)
    names = _imported_names(tree)
    found = set()
    for node in ast.walk(tree):
        # An attribute chain is visited whole; its inner parts never name a clock on their own.
        if isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
            dotted = _dotted(node, names)
            if dotted in CLOCKS:
                found.add((node.lineno, dotted))
    return [f"{path}:{line}: {dotted} reads the clock; take the time as an argument" for line, dotted in sorted(found)]


def _python_files(paths: Sequence[str]) -> Iterator[Path]:
    for path in map(Path, paths):
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def main(argv: Sequence[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m neuronplace.local.purity PATH...", file=sys.stderr)
        return 2
    found = [line for file in _python_files(paths) for line in check_source(file.read_text(), str(file))]
    print("\n".join(found), end="\n" if found else "")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
