"""The shape of the core: framework/ has no import cycles and leaves plugins to plugins/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORK = ROOT / "framework"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> dict[str, set[str]]:
    """Every framework module and the framework modules it imports, at any depth of the
    file (function-level imports count too; ``if TYPE_CHECKING:`` blocks do not run)."""
    modules = {_module_name(p): p for p in FRAMEWORK.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skip.update(id(n) for child in node.body for n in ast.walk(child))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # a package's __init__ is imported by its submodules anyway: not an edge
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)
        graph[name] = deps - {"framework"}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_framework_has_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_framework_never_imports_the_in_tree_plugins() -> None:
    offenders = [
        f"{p.relative_to(ROOT)}:{node.lineno}"
        for p in FRAMEWORK.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom | ast.Import)
        and any(
            n == "plugins" or n.startswith("plugins.")
            for n in (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
            )
        )
    ]
    assert offenders == []


def test_stages_live_in_their_own_packages() -> None:
    """A reader finds where a stage lives from the tree alone."""
    for package in ("data", "model", "train", "evaluate", "export", "serve", "sweep"):
        assert (FRAMEWORK / package / "__init__.py").is_file(), package
    flat = sorted(p.name for p in FRAMEWORK.glob("*.py"))
    assert len(flat) <= 16, flat
