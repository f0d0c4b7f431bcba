"""The house rules, checked on the source: no import cycles, and the core library never
imports the application (recipes, study flows, reports, CLI, benchmarks)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "prunelab"
APP = "prunelab.app"
ENTRY_POINTS = {"prunelab.__main__", "prunelab.cli"}  # thin doors into the CLI


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """prunelab modules that `name` imports, anywhere in the file (lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def test_core_never_imports_the_application():
    bad = [
        f"{n} -> {t}"
        for n, targets in _graph().items()
        if not n.startswith(APP) and n not in ENTRY_POINTS
        for t in targets
        if t.startswith(APP)
    ]
    assert bad == []


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ re-exporting its own submodules is not a cycle in itself
    edges = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    cycles, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = "open"
        for t in sorted(edges.get(n, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t) :] + [n, t]))
            elif t not in state:
                visit(t, [*stack, n] if t != n else stack)
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    assert cycles == []


def test_the_checker_sees_a_planted_violation(tmp_path):
    """The rules above could pass vacuously if the parser found nothing: it does find edges."""
    graph = _graph()
    assert "prunelab.app.steps" in graph["prunelab.app.cli"] or any(
        t.startswith("prunelab.app") for t in graph["prunelab.app.cli"]
    )
    assert "prunelab.models" in graph["prunelab.app.steps"]
