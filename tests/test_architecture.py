"""The layout holds: no import cycles (function-level imports included), stages import only earlier stages.

The import graph is read from the source with :mod:`ast`, so an import
inside a function counts like one at the top of a module: a cycle hidden
behind a function-level import is still a cycle.  The stage order is the
one docs/architecture.md and ``dicom_node/__init__.py`` describe.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dicom_node", "ai_models", "routing_rules")

# dicom_node's rooms in the order a study flows; a room may import its own and earlier rooms only.
STAGES: tuple[tuple[str, ...], ...] = (
    ("dicom_node", "dicom_node.clock", "dicom_node.defaults", "dicom_node.processes", "dicom_node.config"),
    ("dicom_node.db",),
    ("dicom_node.receive",),
    ("dicom_node.delivery",),
    ("dicom_node.outputs",),
    ("dicom_node.jobs",),
    ("dicom_node.routing",),
    ("dicom_node.ops",),
    ("dicom_node.web",),
    ("dicom_node.runtime",),
    ("dicom_node.cli",),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:  # Alembic scripts, loaded by file path
                continue
            found[module_name(path)] = path
    return found


def imports_of(path: Path, name: str, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import statement in the file, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, known, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # "from package import submodule"
                    yield sub, node.lineno
                else:
                    yield from _resolve(base, known, node.lineno)


def _resolve(dotted: str, known: set[str], line: int) -> Iterator[tuple[str, int]]:
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            yield candidate, line
            return
        parts.pop()


def import_graph() -> dict[str, dict[str, int]]:
    modules = project_modules()
    known = set(modules)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, line in imports_of(path, name, known):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def stage_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, stage)
    for stage, prefixes in enumerate(STAGES):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "dicom_node" and module.startswith(prefix + "."))
            if inside and (best is None or len(prefix) > best[0]):
                best = (len(prefix), stage)
    return None if best is None else best[1]


GRAPH = import_graph()


def test_the_graph_sees_function_level_imports() -> None:
    # jobs.worker imports torch inside run_worker only; the model catalog is read inside functions too:
    # the walk must find imports at any depth, or the other tests prove nothing.
    assert "dicom_node.jobs.execute" in GRAPH["dicom_node.jobs.worker"]
    assert "ai_models.catalog" in GRAPH["dicom_node.jobs.execute"]


def test_find_cycles_reports_a_cycle() -> None:
    assert find_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = find_cycles(GRAPH)
    described = [" -> ".join(cycle) for cycle in cycles]
    assert not cycles, "import cycles: " + "; ".join(described)


@pytest.mark.parametrize("library", ["ai_models", "routing_rules"])
def test_libraries_do_not_import_the_node(library: str) -> None:
    offenders = [
        f"{module}:{line} imports {target}"
        for module, targets in GRAPH.items() if module.split(".")[0] == library
        for target, line in targets.items() if target.split(".")[0] == "dicom_node"
    ]
    assert not offenders, offenders


def test_rules_library_knows_no_models() -> None:
    offenders = [
        f"{module}:{line} imports {target}"
        for module, targets in GRAPH.items() if module.startswith("routing_rules")
        for target, line in targets.items() if target.startswith("ai_models")
    ]
    assert not offenders, offenders


def test_every_node_module_belongs_to_a_stage() -> None:
    homeless = [m for m in GRAPH if m.startswith("dicom_node") and stage_of(m) is None]
    assert not homeless, f"modules outside the stages of dicom_node/__init__.py: {homeless}"


def test_stages_import_only_earlier_stages() -> None:
    offenders = []
    for module, targets in GRAPH.items():
        own = stage_of(module)
        if own is None or not module.startswith("dicom_node"):
            continue
        for target, line in targets.items():
            theirs = stage_of(target)
            if theirs is not None and theirs > own:
                offenders.append(f"{module}:{line} imports {target} (a later stage)")
    assert not offenders, "\n".join(offenders)


def test_every_package_says_what_it_owns() -> None:
    for path in sorted((ROOT / "dicom_node").rglob("__init__.py")):
        if "migrations" in path.parts:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 40, f"{path.relative_to(ROOT)} has no docstring saying what it owns"
