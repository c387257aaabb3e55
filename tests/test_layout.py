"""The library stays readable: small modules and functions, no import cycles (imports inside
functions count), `records/` independent of `dualencoder/`, and a repository that speaks of
the product, not of how it was written."""

from __future__ import annotations

import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dualencoder", "records")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 100


def library_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as fh:
        return ast.parse(fh.read(), path)


def imported_modules(path: str, known: set[str]) -> set[str]:
    """Every library module `path` imports, at any depth (functions included). `from a.b
    import c` counts as `a.b.c` when that is a module, else as `a.b`."""
    found = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            if not any(n in known for n in names):  # names defined in the module itself
                names = [node.module]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    me = module_name(path)
    return {m for m in found if m != me}


def test_modules_and_functions_are_small():
    too_long = []
    for path in library_files():
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as fh:
            lines = len(fh.read().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {lines} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines "
                                    f"(max {MAX_FUNCTION_LINES})")
    assert not too_long, "\n".join(too_long)


def import_graph() -> dict[str, set[str]]:
    files = list(library_files())
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, known) for p in files}


def find_cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None. A package's `__init__` importing its
    own submodules is not a cycle by itself; only module-to-module edges are followed."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_even_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The subpackages of dualencoder/ in layers (docs/DESIGN.md): each may import only
# subpackages of lower layers (and its own modules). Top-level modules (config, losses,
# testing, recipe) are not layered here.
LAYERS = (("model", "data"), ("features",), ("encoders",), ("eval",), ("train", "search"),
          ("cli",))


def test_subpackages_import_only_lower_layers():
    level = {name: i for i, group in enumerate(LAYERS) for name in group}
    offenders = []
    for module, deps in import_graph().items():
        parts = module.split(".")
        if parts[0] != "dualencoder" or len(parts) < 3 or parts[1] not in level:
            continue
        for dep in deps:
            target = dep.split(".")
            if (len(target) > 2 and target[0] == "dualencoder" and target[1] in level
                    and target[1] != parts[1] and level[target[1]] >= level[parts[1]]):
                offenders.append(f"{module} imports {dep}")
    assert not offenders, "\n".join(sorted(offenders))


# Top-level modules every layer reads: they import no subpackage (else a subpackage would
# import itself through them, e.g. model -> config -> model).
BASE_MODULES = ("config", "config_values", "losses", "arrays", "csls", "image_towers")


def test_base_modules_import_no_subpackage():
    offenders = [f"{m} imports {d}" for m, deps in import_graph().items()
                 if m.split(".")[-1] in BASE_MODULES and m.count(".") == 1
                 for d in deps if d.count(".") >= 2 and d.startswith("dualencoder.")]
    assert not offenders, "\n".join(sorted(offenders))


def test_library_modules_do_not_import_the_package_facade():
    """`import dualencoder` (build_model, load, save_model) is for users; library modules
    import the module that defines what they need."""
    offenders = [m for m, deps in import_graph().items() if "dualencoder" in deps]
    assert not offenders, "import the defining module instead in: " + ", ".join(offenders)


def test_records_imports_nothing_from_dualencoder():
    offenders = [f"{m} imports {sorted(d for d in deps if d.startswith('dualencoder'))}"
                 for m, deps in import_graph().items()
                 if m.startswith("records") and any(d.startswith("dualencoder") for d in deps)]
    assert not offenders, "\n".join(offenders)


# Words that describe how the code was written rather than what it does.
DIARY = re.compile(r"\b(session|sitting)s?[ -]\d+|\b(this|that|next|previous|earlier|last) "
                   r"(session|sitting)\b|\bissue #?\d+|\bround \d+\b", re.IGNORECASE)


def test_the_repository_speaks_of_the_product_only():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = []
    for rel in files:
        if rel.endswith((".png", ".jpg", ".npz", ".h5")) or rel == "tests/test_layout.py":
            continue
        try:
            with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    if DIARY.search(line):
                        hits.append(f"{rel}:{number}: {line.strip()[:100]}")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
    assert not hits, f"{len(hits)} lines:\n" + "\n".join(hits[:40])
