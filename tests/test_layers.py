"""The package's import graph, read with `ast`: no cycles, the layer rules, imports at module top.

Layers (docs/design.md): `runtime/` imports nothing above it; `serve/` imports only the runtime and the
basic modules; `convert/` and `quant/` never import `serve/`, `eval/` or `cli/`; `eval/` and `cli/` are
leaves that nothing in the product imports (`cli/` registers the benchmarks, so it may import `eval/`).
Own-module imports sit at module top, except those of modules that need a heavy optional dependency.
The product never reads the workplace's `../shared` folder.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "streamasr"
#: optional dependencies heavy enough to import lazily (in a function), never at a module's top
HEAVY = {"torch", "nemo", "ray", "datasets", "matplotlib", "lightning", "omegaconf"}
#: the plain modules every layer may use
BASIC = {"streamasr", "streamasr.errors", "streamasr.audio", "streamasr.frontend", "streamasr.text",
         "streamasr.model_config", "streamasr.formats"}
#: layer -> the layers it may import besides itself and BASIC
ALLOWED = {
    "runtime": set(),
    "serve": {"runtime"},
    "convert": {"runtime", "speech"},
    "quant": {"runtime", "convert", "speech"},
    "model_store": {"runtime", "convert", "speech"},
    "speech": set(),
    "eval": {"runtime", "convert", "quant", "serve", "model_store", "speech"},
    "cli": {"runtime", "convert", "quant", "serve", "model_store", "eval", "speech"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if module == f"{PACKAGE}.__main__":  # `python -m streamasr`: the command line's entry point
        return "cli"
    if module in BASIC:
        return None
    return parts[1] if len(parts) > 1 else None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class Imports:
    """Every module's own-package imports, split into module-top and function-level ones."""

    def __init__(self) -> None:
        self.modules = {_module_name(p): p for p in SRC.joinpath(PACKAGE).rglob("*.py")}
        self.top: dict[str, set[str]] = {m: set() for m in self.modules}
        self.lazy: dict[str, set[str]] = {m: set() for m in self.modules}
        self.top_external: dict[str, set[str]] = {m: set() for m in self.modules}
        self.lazy_external: dict[str, set[str]] = {m: set() for m in self.modules}
        for name, path in self.modules.items():
            tree = ast.parse(path.read_text())
            top_nodes = {id(n) for n in tree.body}
            for node in ast.walk(tree):
                targets: list[str] = []
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    absolute = _resolve(name, path.name == "__init__.py", node)
                    # `from pkg import module` names a module; `from module import name` names the module
                    targets = [f"{absolute}.{a.name}" if f"{absolute}.{a.name}" in self.modules else absolute
                               for a in node.names]
                else:
                    continue
                at_top = id(node) in top_nodes
                for target in targets:
                    if target.split(".")[0] == PACKAGE:
                        (self.top if at_top else self.lazy)[name].add(self._known(target))
                    else:
                        (self.top_external if at_top else self.lazy_external)[name].add(target.split(".")[0])

    def _known(self, target: str) -> str:
        while target not in self.modules and "." in target:
            target = target.rsplit(".", 1)[0]
        return target

    def heavy(self) -> set[str]:
        """Modules that import a heavy optional dependency at their top, directly or through own modules."""
        heavy = {m for m, ext in self.top_external.items() if ext & HEAVY}
        changed = True
        while changed:
            changed = False
            for m, deps in self.top.items():
                if m not in heavy and deps & heavy:
                    heavy.add(m)
                    changed = True
        return heavy

    def edges(self) -> dict[str, set[str]]:
        return {m: self.top[m] | self.lazy[m] for m in self.modules}


@pytest.fixture(scope="module")
def imports() -> Imports:
    return Imports()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if d == m:
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles(imports):
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in imports.edges().items()}
    assert _cycles(edges) == []


def test_layer_rules(imports):
    broken = []
    for module, deps in imports.edges().items():
        layer = _layer(module)
        for dep in deps:
            dep_layer = _layer(dep)
            if dep_layer is None or dep_layer == layer:
                continue
            if layer is None:
                if module == PACKAGE and dep_layer in {"runtime", "model_store"}:
                    continue  # `streamasr.load()` and the public names
                broken.append(f"{module} -> {dep} (basic modules import no layer)")
            elif dep_layer not in ALLOWED[layer]:
                broken.append(f"{module} -> {dep} ({layer}/ may not import {dep_layer}/)")
    assert broken == []


def test_eval_and_cli_are_leaves(imports):
    users = sorted(f"{m} -> {d}" for m, deps in imports.edges().items() for d in deps
                   if _layer(d) in {"eval", "cli"} and _layer(m) not in {"eval", "cli"}
                   or _layer(d) == "cli" and _layer(m) != "cli")
    assert users == []


def test_own_imports_at_module_top(imports):
    heavy = imports.heavy()
    lazy = sorted(f"{m} -> {d}" for m, deps in imports.lazy.items() for d in deps if d not in heavy)
    assert lazy == [], "own-module imports inside functions (only modules needing torch/NeMo/... may be lazy)"


def test_heavy_dependencies_are_not_imported_at_top_of_the_runtime(imports):
    runtime_side = [m for m in imports.modules if _layer(m) in {"runtime", "serve"} or m in BASIC]
    assert sorted(m for m in runtime_side if m in imports.heavy()) == []


def test_product_never_reads_the_workplace_folder():
    found = subprocess.run(["git", "grep", "-n", r"shared/data\|parents\[3\]", "--", "src/"], cwd=SRC.parent,
                           capture_output=True, text=True)
    assert found.stdout == ""
