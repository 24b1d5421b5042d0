"""The package's shape: no import cycle (function-level imports included), no module over ~400
lines without a reason in its docstring, and the README's layout section names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from workflow_utils import REPO

PACKAGE = REPO / "linepo"
LIMIT = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """Every linepo module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    edges = {}
    for name, path in paths.items():
        # A package's own __init__ re-exports its modules; importing a package names the
        # package, not each module, so edges into "linepo" itself are not dependencies.
        edges[name] = {m for m in imports(path, known) if m != name and m != "linepo" and not name.startswith(m + ".")}
    return edges


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_modules_stay_small_or_say_why():
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().count("\n")
        if lines > LIMIT:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "long because" in doc, f"{path.relative_to(REPO)}: {lines} lines and no reason in its docstring"


def test_the_readme_layout_names_every_module():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[: layout.index("\n## ", 3)] if "\n## " in layout[3:] else layout
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" or path.parent.name == "commands":  # commands/: one module per sub-command
            continue
        assert re.search(rf"\b{re.escape(path.stem)}\b", layout), f"README layout misses {path.relative_to(REPO)}"
    for folder in ("games", "toy", "stages", "judges", "training", "workflow", "evaluation", "commands"):
        assert f"{folder}/" in layout, f"README layout misses linepo/{folder}/"
