"""servers/ shows its layers: no import cycle among its modules, none hidden in a function
body, and the library never loads it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "servers"
PROJECT_PACKAGES = ("servers", "securecache")


def imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def top_level_graph() -> dict[str, set[str]]:
    """For each servers module, the servers modules it imports at its top level."""
    modules = {module_name(p): p for p in SERVERS.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {
            target
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in imported(node)
        }
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_among_servers_modules() -> None:
    """Following the top-level imports of servers/ never leads back to where it started."""
    graph = top_level_graph()
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


@pytest.mark.parametrize("path", sorted(SERVERS.glob("*.py")), ids=lambda p: p.name)
def test_no_project_import_in_a_function_body(path: Path) -> None:
    """Imports of securecache or servers modules are all at the top of the module (only
    optional third-party exporters are imported where used)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = [
        (node.lineno, target)
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for target in imported(node)
        if target.split(".")[0] in PROJECT_PACKAGES
    ]
    assert nested == []


def test_importing_the_library_loads_no_server_module() -> None:
    """``import securecache`` (and its facade) in a fresh interpreter imports nothing of
    servers/: the application depends on the library, never the reverse."""
    code = (
        "import json, sys, securecache, securecache.sync; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'servers')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(result.stdout) == []
