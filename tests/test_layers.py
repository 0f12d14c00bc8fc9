"""The layers, as the import graph shows them: no cycles, and the library imports neither the
application (``servers``) nor its own ops tooling (``securecache.ops``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"securecache": ROOT / "src" / "securecache", "servers": ROOT / "servers"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """First-party modules ``name`` imports, anywhere in its body (function bodies too)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "from pkg import name" names a submodule when one exists, else the package.
            module = target
            while module and module not in MODULES:
                module = module.rpartition(".")[0]
            if module and module != name:
                yield module


GRAPH = {name: set(_imports(name, path)) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle, if there is any (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_is_real() -> None:
    """The walk finds the modules and their imports (so the checks below mean something)."""
    assert "securecache.readthrough" in GRAPH["securecache.client"]
    assert "securecache.ops.migrations" in GRAPH["securecache.ops.cli"]
    assert len(MODULES) > 20


def test_no_import_cycle_in_src_or_servers() -> None:
    """No module reaches itself through its imports, function-body imports included."""
    assert _cycle() is None, " -> ".join(_cycle() or [])


RUNTIME = sorted(
    m
    for m in MODULES
    # __main__ is the CLI's entry point: tooling, and imported by nothing.
    if m.startswith("securecache") and not m.startswith(("securecache.ops", "securecache.__main__"))
)


@pytest.mark.parametrize("module", RUNTIME)
def test_the_runtime_library_imports_no_application_or_tooling(module: str) -> None:
    """Runtime modules import nothing from servers/ or securecache.ops, even lazily."""
    bad = sorted(t for t in GRAPH[module] if t.startswith(("servers", "securecache.ops")))
    assert bad == []


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(result.stdout.split())


def test_importing_the_library_loads_no_application_or_tooling() -> None:
    """``import securecache`` (and the sync twin) load no module of servers/ or the tooling."""
    loaded = _loaded_after("import securecache, securecache.sync")
    assert "securecache.client" in loaded
    assert sorted(m for m in loaded if m.startswith(("servers", "securecache.ops"))) == []


def test_the_cli_loads_the_process_supervisor_only_for_dev() -> None:
    """``securecache migrate`` and friends never load the embedded-server supervisor."""
    loaded = _loaded_after("import securecache.ops.cli")
    assert "securecache.ops.migrations" in loaded
    assert {"securecache.ops.dev", "securecache.ops.devstack"}.isdisjoint(loaded)
