"""The package's layout rules (README, "Layout"; CONTRIBUTING.md), checked on the source itself:
no import circle between modules (imports inside functions included), no module importing
another module's private name, no module over 450 lines, and the layers running downhill.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "slice_trl"
MAX_LINES = 450

# Lower layers never import higher ones (README "Layout"); a layer is a folder of the package (the
# top-level modules are the commands). A module not listed is checked by the circle and private-name rules only.
LAYERS = [
    ("utils", {"utils"}),
    ("configs", {"configs"}),
    ("kernels", {"kernels"}),
    ("models", {"models"}),
    ("components", {"initializers", "strategies", "tasks", "evaluation"}),
    ("trainer", {"trainer"}),
    ("applications", {"cli", "hub", "mining", "run", "mine", "compare", ""}),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path  # "" is the package itself
    return out


MODULES = _modules()


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every slice_trl module an import names."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "slice_trl" or alias.name.startswith("slice_trl."):
                found.append((alias.name[len("slice_trl."):] if "." in alias.name else "", None))
        return found
    if node.level == 0:
        if not (node.module == "slice_trl" or (node.module or "").startswith("slice_trl.")):
            return found
        base = node.module[len("slice_trl."):] if "." in node.module else ""
    else:
        here = importer.split(".") if importer else []
        package = here if is_package else here[:-1]
        package = package[:len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join(package + ([node.module] if node.module else []))
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        if sub in MODULES:  # `from pkg import module`
            found.append((sub, None))
        else:
            found.append((base, alias.name))
    return found


def _imports() -> dict[str, list[tuple[str, str | None, int]]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [(mod, attr, node.lineno) for mod, attr in _resolve(name, path.name == "__init__.py", node)]
        graph[name] = edges
    return graph


IMPORTS = _imports()


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = {m: sorted({dst for dst, _, _ in edges if dst in MODULES and dst != m}) for m, edges in IMPORTS.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_imports_inside_functions_and_relative_levels():
    # independent facts of the tree: a lazy import and a two-level relative import
    assert any(dst == "models.gradients" for dst, _, _ in IMPORTS["strategies.base"])
    assert any(dst == "models.lora" for dst, _, _ in IMPORTS["strategies.eblora"])
    assert any(dst == "utils.distributed" for dst, _, _ in IMPORTS["models.gradients"])


def test_no_import_circle():
    assert _cycles() == []


def test_no_module_imports_another_modules_private_name():
    bad = [f"slice_trl.{src or '__init__'}:{line} imports {attr} from slice_trl.{dst}"
           for src, edges in IMPORTS.items() for dst, attr, line in edges
           if attr and attr.startswith("_") and not attr.startswith("__") and dst != src]
    assert bad == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"slice_trl/{MODULES[name].relative_to(PACKAGE)} has {n} lines (> {MAX_LINES})"


def _layer(module: str) -> int | None:
    for i, (_, members) in enumerate(LAYERS):
        if module in members or module.split(".")[0] in members:
            return i
    return None


def test_every_module_has_a_layer():
    assert [m for m in MODULES if _layer(m) is None] == []


def test_layers_run_downhill():
    bad = []
    for src, edges in IMPORTS.items():
        for dst, _, line in edges:
            if dst in MODULES and dst != src and _layer(dst) > _layer(src):
                bad.append(f"slice_trl.{src}:{line} ({LAYERS[_layer(src)][0]}) imports slice_trl.{dst}")
    assert bad == []


# kernels/ is torch only (README "Layout"): functions on tensors. Besides torch, a kernel may use math, the
# typing helpers (typing, collections.abc, dataclasses, __future__) and zlib (crc32: a pure function giving
# `decompose.module_seed` a seed that is the same in every process). Anything else - PEFT, the console, another
# layer of this package, ctypes - belongs in models/ or utils/.
KERNEL_IMPORTS = {"__future__", "torch", "math", "typing", "collections.abc", "dataclasses", "zlib"}


def _foreign_kernel_imports(tree: ast.AST) -> list[str]:
    """Top-level names of the modules a kernel module imports outside KERNEL_IMPORTS (relative imports included)."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
        else:
            continue
        for name in names:
            if not any(name == ok or name.startswith(ok + ".") for ok in KERNEL_IMPORTS):
                bad.append(f"{name} (line {node.lineno})")
    return bad


def test_the_kernel_import_check_flags_what_a_kernel_must_not_import():
    # independent fact: the pre-issue-26 gradient probe imported PEFT, the console and ctypes from kernels/
    source = "import ctypes\nimport torch\nfrom slice_trl.utils import distributed\nfrom . import surgery\n" \
             "def f():\n    from peft.tuners.lora import LoraLayer\n"
    assert _foreign_kernel_imports(ast.parse(source)) == [
        "ctypes (line 1)", "slice_trl.utils (line 3)", ". (line 4)", "peft.tuners.lora (line 6)"]


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.split(".")[0] == "kernels"))
def test_kernels_import_only_torch_and_the_standard_math(name):
    path = MODULES[name]
    bad = _foreign_kernel_imports(ast.parse(path.read_text(), str(path)))
    assert bad == [], f"slice_trl/{path.relative_to(PACKAGE)} imports {bad}: move that code to models/ or utils/"


def _cited_names() -> list[tuple[str, str]]:
    import re

    root = PACKAGE.parent
    out = []
    for doc in [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").glob("*.md"))]:
        for name in re.findall(r"`(slice_trl(?:\.[A-Za-z_]\w*)+)", doc.read_text()):
            out.append((doc.name, name))
    return sorted(set(out))


@pytest.mark.parametrize("doc, name", _cited_names())
def test_every_name_the_docs_cite_exists(doc, name):
    import importlib

    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes below it
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{doc} cites {name}: {'.'.join(parts[:i])} has no {attr!r}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{doc} cites {name}, which is not a module of the package")
