"""The package's layout as a spec: which layer may import which, no import cycles, the
method packages free of drivers, and a block loop that fits on one screen."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ardiff"

CORE = {"utils", "nn", "diffusion", "models", "generate", "data"}
# What each package may import (besides itself). Imports only point down: the core below,
# the story world and the method above it, experiments, the page and the command line on top.
ALLOWED = {
    "utils": set(),
    "nn": {"utils"},
    "diffusion": {"utils"},
    "models": {"utils", "nn", "diffusion"},
    "generate": {"utils", "diffusion", "models", "data"},
    "data": {"utils", "models"},
    "eval": CORE,
    "worlds": CORE | {"eval"},
    "train": CORE | {"worlds"},
    "acdc": CORE,
    "experiments": CORE | {"eval", "worlds", "train", "acdc"},
    "serve": CORE | {"eval", "worlds", "acdc", "experiments"},
    "cli": CORE | {"eval", "worlds", "train", "acdc", "experiments", "serve"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every ardiff module a file imports, at module level or inside functions."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ardiff")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if not base.startswith("ardiff"):
                continue
            for alias in node.names:  # `from ardiff.x import y` may name a submodule y
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_every_package_has_a_layer(graph):
    packages = {_package(m) for m in graph} - {None, "assets"}
    assert packages == set(ALLOWED)


def test_imports_only_point_down(graph):
    upward = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                    if _package(m) and _package(d) and _package(d) != _package(m)
                    and _package(d) not in ALLOWED[_package(m)])
    assert not upward


def test_no_import_cycles(graph):
    # Edges to a package's __init__ are left out: importing ardiff.acdc.base runs
    # ardiff/acdc/__init__.py first, which is the package re-exporting, not a dependency.
    edges = {m: {d for d in deps if not (m.startswith(d + "."))} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_method_packages_hold_no_drivers():
    for package in ("acdc", "worlds", *CORE):
        for path in (SRC / package).rglob("*.py"):
            source = path.read_text()
            assert "ArgumentParser(" not in source, f"{path}: command-line code belongs in ardiff/cli"
            assert "ardiff.experiments" not in source and "ardiff.cli" not in source, path


def test_block_loop_fits_on_one_screen():
    tree = ast.parse((SRC / "generate" / "sampler.py").read_text())
    sample = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample")
    assert sample.end_lineno - sample.lineno + 1 + len(sample.decorator_list) <= 90
