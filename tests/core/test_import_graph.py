"""The package's import graph (read with ast, nothing imported): no cycles, and the core never
reaches up into a stage. Imports inside functions count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"ftp_export": ROOT / "ftp_export", "ftp_export_trainer": ROOT / "trainer" / "ftp_export_trainer"}
CORE = ("ftp_export.routing", "ftp_export.routed", "ftp_export.schedule", "ftp_export.architectures", "ftp_export.graph_io")
STAGES = (
    "ftp_export.export",
    "ftp_export.runtimes",
    "ftp_export.evaluation",
    "ftp_export.bench",
    "ftp_export.cli",
    "ftp_export_trainer",
)


def _modules() -> dict[str, Path]:
    found = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The project module an import names (``from a.b import c`` may name module a.b.c or a name in a.b)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                dep = _resolve(name, modules)
                if dep is not None and dep != mod and not mod.startswith(dep + "."):  # a package's own __init__ is not a dependency edge
                    graph[mod].add(dep)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read():
    graph = import_graph()
    assert "ftp_export.routed.model" in graph["ftp_export.export.job"] or any(
        "ftp_export.routed" in d for d in graph["ftp_export.export.job"]
    )
    assert len(graph) > 40


def test_no_import_cycles():
    assert _cycle(import_graph()) is None, " -> ".join(_cycle(import_graph()) or [])


def test_core_does_not_import_stages():
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in import_graph().items()
        if _in(mod, CORE)
        for dep in deps
        if _in(dep, STAGES)
    ]
    assert not bad, bad


def test_library_never_imports_the_trainer():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() if m.startswith("ftp_export.") for d in deps if d.startswith("ftp_export_trainer")]
    assert not bad, bad


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
