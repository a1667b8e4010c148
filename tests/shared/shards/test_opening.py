"""shared/shards/opening.py: `open_dataset` sits above the reader and the remote module, so the
package's imports form no circle (issue 32: remote -> shards -> reader -> remote was one). The
check reads every module's imports (also those inside functions) and looks for a cycle among the
project's own modules."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _modules(packages: tuple[str, ...]) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the project modules it imports. ``from a.b import c`` counts as importing ``a.b.c``
    when that is a module, else ``a.b``; a submodule's implicit import of its parent package is not
    an edge (Python finishes the package first)."""
    mods = _modules(packages)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in mods else node.module)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


@pytest.mark.parametrize("packages", [("shared",), ("shared", "synth", "train")])
def test_no_import_circle(packages):
    assert _cycles(_import_graph(packages)) == []


def test_reader_knows_no_urls_and_remote_imports_modules_not_the_package():
    graph = _import_graph(("shared",))
    assert "shared.shards.remote" not in graph["shared.shards.reader"]
    assert graph["shared.shards.opening"] >= {"shared.shards.reader", "shared.shards.remote"}
    assert "shared.shards" not in graph["shared.shards.remote"]


def test_open_dataset_is_the_openings():
    import shared
    from shared import shards
    from shared.shards import opening

    assert shared.open_dataset is shards.open_dataset is opening.open_dataset
