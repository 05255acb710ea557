"""The package's shape: imports only go downward, and no module imports itself back.

Read from the source with ``ast`` (every import, also those inside functions,
except ``if TYPE_CHECKING:`` blocks), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dc_jupyter"

#: What each layer may import from dc_jupyter (besides itself). ``remote`` runs
#: on workers that lack dc_jupyter, so it imports nothing from it at all.
ALLOWED = {
    "remote": set(),
    "errors": set(),
    "config": set(),
    "backends.base": {"errors", "config", "remote"},
    "core": {"errors", "config", "remote", "backends.base"},
    "backends": {"errors", "config", "remote", "core", "backends.base"},
    "ui": {"errors", "config", "core"},
    "cell": {"errors", "config", "remote", "core", "backends", "ui"},
    "tools": {"errors", "config", "core", "backends", "ui", "tools", "__init__"},
}

#: Known violations still to be removed (issue 13); this list only shrinks.
KNOWN_VIOLATIONS: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The dc_jupyter modules ``path`` imports, resolved to module names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("dc_jupyter"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("dc_jupyter"):
                    for alias in child.names:
                        sub = f"{target}.{alias.name}"
                        found.add(sub if sub in known else target)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) for p in paths}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            # Importing a package runs its __init__, but the package's own
            # __init__ re-exporting its children is not a cycle of design.
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt in edges and not state.get(nxt):
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if not state.get(start):
            found = dfs(start)
            if found:
                return found
    return None


def layer_of(module: str) -> str:
    rest = module.split(".")[1:] or ["__init__"]
    if rest[0] == "backends" and len(rest) > 1 and rest[1] == "base":
        return "backends.base"
    return rest[0]


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    edges = {m: deps - KNOWN_VIOLATIONS.get(m, set()) for m, deps in graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_go_downward(module):
    layer = layer_of(module)
    if layer in ("__init__", "__main__", "loadtest"):
        return  # the package's front door and the command-line entry may import anything
    allowed = ALLOWED[layer] | {layer}
    wrong = sorted(
        dep
        for dep in graph()[module] - KNOWN_VIOLATIONS.get(module, set())
        if layer_of(dep) not in allowed and dep != "dc_jupyter"
    )
    assert not wrong, (
        f"{module} ({layer}) imports {wrong}; {layer} may import only {sorted(allowed)}"
    )
