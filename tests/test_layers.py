"""The architecture's layers, checked on the source text (parsed, never imported).

A package may import only its own layer and those below it, so a service can be
deployed, tested and replaced without the ones that build on it.
"""

from __future__ import annotations

import ast
import graphlib
import importlib.util
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mdf", "db", "scheduler", "worker", "training", "delivery", "mdf_model")
SOURCES = {
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
    if not path.relative_to(ROOT).as_posix().startswith("db/migrations/versions/")
}

# A module belongs to its most specific entry ("mdf" alone: the modules directly in mdf/).
LAYERS = {
    "mdf": 0,
    "mdf_model": 0,
    "db": 1,
    "mdf.imaging": 2,
    "scheduler": 3,
    "worker": 3,
    "training": 3,
    "delivery": 3,
    "mdf.analysis": 3,
    "mdf.synthetic": 4,
}
# Beyond the layer order: entries an entry must not import at all.
APART = {
    "mdf": set(LAYERS) - {"mdf"},  # the root command knows no service
    "mdf_model": set(LAYERS) - {"mdf_model"},  # the model is a library of its own
    "scheduler": {"worker", "delivery"},
    "worker": {"scheduler", "delivery"},
    "training": {"scheduler", "worker", "delivery"},
    "delivery": {"scheduler", "worker", "training", "mdf.analysis"},
    # analysts read the database only
    "mdf.analysis": {"scheduler", "worker", "training", "delivery"},
}


def home(module: str) -> str:
    """The LAYERS entry a project module belongs to."""
    return max((e for e in LAYERS if module == e or module.startswith(f"{e}.")), key=len)


def deferred(node: ast.AST) -> bool:
    """Whether the imports under the node wait until after the module has loaded."""
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (
        isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
    )


def imports(at_import_time: bool = False) -> Iterator[tuple[str, str, int]]:
    """(module, imported, line) for every import, third-party ones included.

    ``from a import b`` names the module ``a.b`` where there is one, else ``a``.
    ``at_import_time`` leaves out imports in functions and under ``if TYPE_CHECKING:``,
    which never run while the module loads, so they cannot close an import cycle.
    """
    for module, path in SOURCES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        pending: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
        while pending:
            node = pending.pop()
            if not (at_import_time and deferred(node)):
                pending.extend(reversed(list(ast.iter_child_nodes(node))))  # in source order
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield module, alias.name, node.lineno
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                for alias in node.names:
                    name = f"{base}.{alias.name}"
                    yield module, name if name in SOURCES else base, node.lineno


def where(module: str, line: int) -> str:
    return f"{SOURCES[module].relative_to(ROOT)}:{line}"


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], int] = {}
    for module, imported, line in imports(at_import_time=True):
        if imported in SOURCES and imported != module:
            graph.setdefault(module, set()).add(imported)
            lines.setdefault((module, imported), line)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1][::-1]  # graphlib lists it against the import direction
        steps = [f"{where(a, lines[a, b])}: imports {b}" for a, b in pairwise(cycle)]
        raise AssertionError("import cycle:\n" + "\n".join(steps)) from None


def test_no_package_imports_above_its_layer() -> None:
    errors = []
    for module, imported, line in imports():
        if imported.partition(".")[0] not in PACKAGES:
            continue
        mine, theirs = home(module), home(imported)
        if LAYERS[theirs] > LAYERS[mine]:
            rule = f"{theirs} (layer {LAYERS[theirs]}) is above {mine} (layer {LAYERS[mine]})"
        elif theirs in APART.get(mine, ()):
            rule = f"{mine} must not import {theirs}"
        else:
            continue
        errors.append(f"{where(module, line)}: imports {imported}: {rule}")
    assert not errors, "\n".join(errors)


def test_db_imports_neither_celery_nor_torch() -> None:
    errors = [
        f"{where(module, line)}: imports {imported}"
        for module, imported, line in imports()
        if home(module) == "db" and imported.partition(".")[0] in {"celery", "torch"}
    ]
    assert not errors, "\n".join(errors)
