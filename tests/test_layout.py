"""The test tree's two rules (DESIGN.md, "Where things are"; issue 32, item 3), read from the files
with ``ast``:

- no test touches a private name it does not define itself: no ``from synth.x import _name``, no
  ``module._name`` / ``obj._name`` of production code (synth/, train/, shared/) or of a library
  (CPython's ``pool._outqueue`` included), no ``monkeypatch.setattr(module, "_name", ...)``.
  Dunders (``__version__``) and namedtuple's API (``_replace``, ``_asdict``, ...) are public; the
  tests' own helpers (tests/*kit.py, a test file's ``_helper``) may be private.
- a module's tests live at its path under tests/: ``tests/<package>/<sub>/test_<module>.py`` for
  ``<package>/<sub>/<module>.py`` (or for the package ``<package>/<sub>/<module>/__init__.py``;
  split by aspect: ``test_<module>_<aspect>.py``); end-to-end tests across both CLIs sit at the
  top (tests/test_*.py).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PRODUCTION = ("synth", "train", "shared")
MIRRORED = PRODUCTION + ("bench",)  # bench/*.py scripts have their tests in tests/bench/
# namedtuple's public methods and fields, underscored to keep clear of field names
PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}

# Test files that still read a private name, with why; the check fails on any other file, and on
# an entry here whose file no longer does.
PENDING_PRIVATE: dict[str, str] = {}

# Test files whose name matches no module yet, each with what it tests and why it is not moved.
# The layout test fails on any other such file, and on an entry here that is no longer needed.
PENDING_LAYOUT: dict[str, str] = {}


def _private(name: str) -> bool:
    return (name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            and name not in PUBLIC_UNDERSCORED)


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _own_private_names(files: list[Path]) -> set[str]:
    """Private names the test tree defines itself: functions, classes, arguments, variables and
    attributes it assigns (a fake source's ``self._ids``)."""
    names: set[str] = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if _private(n)}


def private_name_uses(path: Path, own: set[str], root: Path = ROOT) -> list[str]:
    """``file:line: what`` for each private name of production code or a library that ``path``
    imports, reads, or patches by name; ``own``: the private names the tests define themselves."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            for alias in node.names:
                if any(_private(p) for p in parts) or (parts[0] in PRODUCTION and _private(alias.name)):
                    found.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(p) for p in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("setattr", "getattr", "hasattr", "delattr", "setitem"):
                for arg in node.args[:2]:
                    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                        continue
                    segments = arg.value.split(".")
                    if (len(segments) == 1 and _private(arg.value) and arg.value not in own) or (
                            len(segments) > 1 and segments[0] in PRODUCTION and any(map(_private, segments))):
                        found.append(f"{where}:{node.lineno}: {name}(..., {arg.value!r})")
    return found


def _helpers() -> list[Path]:
    """The tests' helper modules (tests/*kit.py, tests/train_datasets.py, conftest.py files)."""
    return [f for f in _test_files() if not f.name.startswith("test_")]


def test_no_test_touches_a_private_name():
    helpers = _own_private_names(_helpers())
    uses = {f.relative_to(ROOT).as_posix(): private_name_uses(f, helpers | _own_private_names([f]))
            for f in _test_files()}
    found = [use for f, found_here in uses.items() if f not in PENDING_PRIVATE for use in found_here]
    stale = [f for f in PENDING_PRIVATE if not uses.get(f)]
    assert not stale, f"PENDING_PRIVATE entries no longer needed: {stale}"
    assert not found, "private names used by tests (test through the public API, or make the piece " \
                      "public in production code):\n" + "\n".join(found)


def test_the_private_name_check_finds_each_kind(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "from synth.synthesis import placement\n"
        "from synth.synthesis.placement import _clip\n"
        "from synthkit import _kit_helper\n"
        "import train.data\n"
        "def _own(x):\n"
        "    x._own_attr = 1\n"
        "    return x._own_attr\n"
        "def test_x(monkeypatch, pool, params):\n"
        "    placement._MOVE_STEPS\n"
        "    train.data.ShardBatchStream._sample\n"
        "    pool._outqueue._reader\n"
        "    monkeypatch.setattr(placement, '_shares', None)\n"
        "    monkeypatch.setattr('synth.selection.scanning._scan_labels', None)\n"
        "    _own(1).__class__, placement.search_placement, params._replace(a=1)\n")
    found = private_name_uses(sample, _own_private_names([sample]), root=tmp_path)
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted([
        "from synth.synthesis.placement import _clip", "placement._MOVE_STEPS", "train.data.ShardBatchStream._sample",
        "pool._outqueue._reader", "pool._outqueue", "setattr(..., '_shares')",
        "setattr(..., 'synth.selection.scanning._scan_labels')"]), found


def _modules() -> set[str]:
    """Module paths without .py (``synth/synthesis/bank``, ``shared/shards/__init__``)."""
    return {p.relative_to(ROOT).with_suffix("").as_posix()
            for pkg in MIRRORED for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}


def mirrored_module(test_file: Path, modules: set[str]) -> str | None:
    """The module ``tests/<dirs>/test_<name>.py`` mirrors: ``<dirs>/<name>`` or the package
    ``<dirs>/<name>/__init__``; a module's tests split by aspect, ``test_<module>_<aspect>.py``,
    mirror ``<module>`` (the longest such name); None if there is no such module."""
    rel = test_file.relative_to(TESTS)
    name = rel.with_suffix("").name.removeprefix("test_")
    words = name.split("_")
    for n in range(len(words), 0, -1):
        stem = (rel.parent / "_".join(words[:n])).as_posix()
        for candidate in (stem, stem + "/__init__"):
            if candidate in modules:
                return candidate
    return None


def test_test_files_mirror_modules():
    """Every tests/<package>/**/test_<module>.py names a module at that path (top-level test files
    are the end-to-end tests); prints how many production modules have such a file."""
    modules = _modules()
    unmatched, covered = [], set()
    for f in sorted(TESTS.rglob("test_*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if f.parent == TESTS:
            continue
        module = mirrored_module(f, modules)
        if module is None:
            unmatched.append(rel)
        else:
            covered.add(module)
    production = {m for m in modules if m.split("/")[0] in PRODUCTION}
    print(f"\n{len(covered & production)} of {len(production)} production modules (__init__ included) have a "
          f"test file at their path; {len(unmatched)} test files name no module ({len(PENDING_LAYOUT)} pending)")
    new = [u for u in unmatched if u not in PENDING_LAYOUT]
    # an entry whose file has gone (moved, or not yet committed) is harmless; one that now names a
    # module is out of date
    stale = [p for p in PENDING_LAYOUT if (ROOT / p).exists() and p not in unmatched]
    assert not new, "test files that name no module (tests/<package>/<sub>/test_<module>.py for " \
                    "<package>/<sub>/<module>.py):\n" + "\n".join(new)
    assert not stale, f"PENDING_LAYOUT entries no longer needed (moved or renamed): {stale}"


@pytest.mark.parametrize("test_file,module", [("synth/synthesis/test_bank.py", "synth/synthesis/bank"),
                                              ("shared/test_sources.py", "shared/sources/__init__"),
                                              ("synth/commands/test_build_cmd_recipes.py", "synth/commands/build_cmd"),
                                              ("train/test_fit_steps.py", "train/fit_steps"),
                                              ("train/model/test_nothing_here.py", None)])
def test_mirror_rule(test_file, module):
    assert mirrored_module(TESTS / test_file, _modules()) == module
