"""The import direction of rgm_ray, written down once and checked: a stage imports only stages before it.

``LAYERS`` below is the rule. Each layer names *units*: a top-level module or sub-package of
``rgm_ray`` (``__init__`` for ``rgm_ray`` itself), or a top-level package beside it (``pipelines``).
A module may import modules of an earlier layer, and modules of its own layer (or of a layer
standing ``beside`` it) as long as that makes no cycle: neither between modules nor between units
(``presets`` importing ``pipeline.config`` while ``pipeline.context`` imports ``presets`` is a
package cycle even though no module imports itself back).

How imports are read (with :mod:`ast`, so checking never imports torch or Ray):

- ``import a.b``, ``from a import b`` and relative imports, at module level *and* inside functions:
  a function-level import runs on the first call and is the usual way a cycle is hidden, so it counts.
- ``from pkg import name`` is an edge to ``pkg.name`` if that is a module, else to ``pkg``.
- Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit edges are *not*
  added (a package importing its own sub-modules would otherwise always be a cycle). An upward
  import through a package ``__init__`` is still caught, because it is an explicit upward edge.
- Imports under ``if TYPE_CHECKING:`` never run, so they make neither a cycle nor a violation;
  ``--modules`` tags them ``type-checking`` and ``--check`` notes the ones that point upward.
- ``importlib.import_module(...)`` with a computed name is not seen (``rgm_ray.weigh`` uses it to
  load its own sub-modules lazily, within one layer).

``python -m rgm_ray.layers`` prints the layer-level import graph, ``--modules`` the module-level
edges, ``--check`` the violations (exit status 1 if there are any).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

PACKAGE = "rgm_ray"
ROOTS = ("rgm_ray", "pipelines")  # top-level packages whose modules make the graph
SOURCE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding rgm_ray/ and pipelines/


@dataclass(frozen=True)
class Layer:
    """One step of the import order: ``units`` it holds; ``beside`` names an earlier layer of equal rank."""

    name: str
    units: tuple[str, ...]
    beside: str | None = None


LAYERS: tuple[Layer, ...] = (
    Layer("core", ("__init__", "seeding", "configs", "results", "runtime", "tracking", "progress",
                    "layers")),
    Layer("data", ("data",)),
    Layer("store", ("store",)),
    Layer("viz", ("viz",)),  # figures are written atomically, through the store
    Layer("models", ("models",)),
    Layer("generate", ("generate",)),
    Layer("weigh", ("weigh",)),
    Layer("resample", ("resample",)),
    Layer("evaluate", ("evaluate",)),
    Layer("audit", ("audit",)),
    Layer("ssl", ("ssl",)),
    Layer("tune", ("tune",)),
    Layer("report", ("report",)),
    Layer("pipeline", ("pipeline",)),
    Layer("cli", ("cli",)),
    Layer("bench", ("bench",), beside="cli"),
    Layer("pipelines", ("pipelines",)),
)


@dataclass(frozen=True)
class Import:
    """One import statement's edge between two modules of the graph."""

    source: str
    target: str
    path: Path
    line: int
    function_level: bool = False  # inside a def: runs on the first call
    type_only: bool = False  # under ``if TYPE_CHECKING:``: never runs

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class ImportGraph:
    """The modules found under the roots (name -> file) and the imports between them."""

    modules: dict[str, Path]
    imports: tuple[Import, ...]

    def runtime_edges(self) -> dict[str, set[str]]:
        """source -> targets, without ``TYPE_CHECKING`` imports."""
        edges: dict[str, set[str]] = {module: set() for module in self.modules}
        for imp in self.imports:
            if not imp.type_only:
                edges[imp.source].add(imp.target)
        return edges


@dataclass(frozen=True)
class Violation:
    """A broken rule: ``kind`` is ``cycle``, ``package-cycle``, ``upward`` or ``unplaced``; ``modules`` are
    the ones involved."""

    kind: str
    modules: tuple[str, ...]
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


# --- reading the graph --------------------------------------------------------------------------

def discover_modules(source_root: Path = SOURCE_ROOT, roots: Sequence[str] = ROOTS) -> dict[str, Path]:
    """Module name -> ``.py`` file (relative to ``source_root``) for every module under ``roots``."""
    modules = {}
    for root in roots:
        for path in sorted((source_root / root).rglob("*.py")):
            relative = path.relative_to(source_root)
            parts = relative.with_suffix("").parts
            if "__pycache__" not in parts:
                modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = relative
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, function_level: bool = False, type_only: bool = False
                  ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement in ``node`` with (inside a function, under TYPE_CHECKING)."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, function_level, type_only
    elif isinstance(node, ast.If) and _is_type_checking(node.test):
        for statement in node.body:
            yield from _import_nodes(statement, function_level, True)
        for statement in node.orelse:
            yield from _import_nodes(statement, function_level, type_only)
    else:
        inside = function_level or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            yield from _import_nodes(child, inside, type_only)


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the graph (None: outside the graph)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, Path]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            target = _known_prefix(alias.name, modules)
            if target:
                yield target
        return
    base = node.module or ""
    if node.level:  # relative: strip one package level per dot beyond the first
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        target = submodule if submodule in modules else _known_prefix(base, modules)
        if target:
            yield target


def parse_imports(module: str, path: Path, modules: dict[str, Path], source_root: Path = SOURCE_ROOT
                  ) -> list[Import]:
    """The edges from ``module`` (in ``source_root / path``) to other modules of the graph."""
    tree = ast.parse((source_root / path).read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    return [Import(module, target, path, node.lineno, function_level, type_only)
            for node, function_level, type_only in _import_nodes(tree)
            for target in dict.fromkeys(_targets(node, module, is_package, modules))]  # one edge per statement


def import_graph(source_root: Path = SOURCE_ROOT, roots: Sequence[str] = ROOTS) -> ImportGraph:
    """Parse every module under ``roots`` (no module is imported)."""
    modules = discover_modules(source_root, roots)
    imports = [imp for module, path in modules.items()
               for imp in parse_imports(module, path, modules, source_root)]
    return ImportGraph(modules, tuple(imports))


# --- the rule -----------------------------------------------------------------------------------

def unit_of(module: str, package: str = PACKAGE) -> str:
    """The name ``LAYERS`` uses for a module: ``rgm_ray.models.vae`` -> ``models``, ``pipelines.x`` -> ``pipelines``."""
    parts = module.split(".")
    if parts[0] != package:
        return parts[0]
    return parts[1] if len(parts) > 1 else "__init__"


def ranks(layers: Sequence[Layer] = LAYERS) -> dict[str, int]:
    """Layer name -> position in the order (a layer ``beside`` another shares its rank)."""
    rank: dict[str, int] = {}
    for layer in layers:
        rank[layer.name] = rank[layer.beside] if layer.beside else max(rank.values(), default=-1) + 1
    return rank


def layer_of(module: str, layers: Sequence[Layer] = LAYERS, package: str = PACKAGE) -> str | None:
    unit = unit_of(module, package)
    return next((layer.name for layer in layers if unit in layer.units), None)


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in order of their smallest member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycle(start: str, edges: dict[str, set[str]]) -> list[str]:
    """The shortest import path from ``start`` back to itself (``[start, ..., start]``)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(edges.get(node, ())):
            if successor == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(came_from[chain[-1]])
                return [*reversed(chain), start]
            if successor not in came_from:
                came_from[successor] = node
                queue.append(successor)
    return []


def _module_cycles(graph: ImportGraph, where: dict[tuple[str, str], str]) -> list[Violation]:
    edges = graph.runtime_edges()
    violations = []
    for component in strongly_connected(edges):
        if len(component) > 1 or component[0] in edges[component[0]]:
            cycle = shortest_cycle(component[0], edges)
            steps = " -> ".join(f"{a} ({where[a, b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"
            others = f"; strongly connected: {', '.join(component)}" if len(component) > len(cycle) - 1 else ""
            violations.append(Violation("cycle", tuple(component), steps + others))
    return violations


def _package_cycles(where: dict[tuple[str, str], str], module_cycles: list[Violation], upward: set[tuple[str, str]],
                    package: str) -> list[Violation]:
    """Cycles between units (sub-packages, top-level modules) left once module cycles and upward
    imports, which are reported on their own, are set aside."""
    in_cycle = {module: i for i, cycle in enumerate(module_cycles) for module in cycle.modules}
    unit_edges: dict[str, set[str]] = defaultdict(set)
    witness: dict[tuple[str, str], str] = {}
    for source, target in sorted(set(where) - upward):
        a, b = unit_of(source, package), unit_of(target, package)
        if a != b and not (source in in_cycle and in_cycle[source] == in_cycle.get(target)):
            unit_edges[a].add(b)
            witness.setdefault((a, b), f"{source} -> {target} ({where[source, target]})")
    violations = []
    for component in strongly_connected(unit_edges):
        if len(component) > 1:
            cycle = shortest_cycle(component[0], unit_edges)
            steps = "; ".join(witness[a, b] for a, b in zip(cycle, cycle[1:]))
            violations.append(Violation("package-cycle", tuple(component),
                                        f"{' -> '.join(cycle)}: {steps}"))
    return violations


def check(graph: ImportGraph, layers: Sequence[Layer] = LAYERS, package: str = PACKAGE) -> list[Violation]:
    """Every module outside ``layers``, every import cycle and every import of a later layer."""
    violations = [Violation("unplaced", (module,), f"{module} ({graph.modules[module]}) is in no layer; "
                            f"add its unit {unit_of(module, package)!r} to rgm_ray.layers.LAYERS")
                  for module in sorted(graph.modules) if layer_of(module, layers, package) is None]
    where = {(imp.source, imp.target): imp.where for imp in reversed(graph.imports) if not imp.type_only}
    upward = [imp for imp in upward_imports(graph, layers, package) if not imp.type_only]
    module_cycles = _module_cycles(graph, where)
    violations += module_cycles + _package_cycles(where, module_cycles, {(i.source, i.target) for i in upward},
                                                  package)
    for imp in upward:
        kind = "function-level import" if imp.function_level else "import"
        violations.append(Violation("upward", (imp.source, imp.target),
                                    f"{imp.source} ({layer_of(imp.source, layers, package)}) imports "
                                    f"{imp.target} ({layer_of(imp.target, layers, package)}), a later layer: "
                                    f"{kind} at {imp.where}"))
    return violations


def upward_imports(graph: ImportGraph, layers: Sequence[Layer] = LAYERS, package: str = PACKAGE) -> list[Import]:
    """Imports of a later layer, ``TYPE_CHECKING`` ones included (``check`` counts only the others)."""
    rank = ranks(layers)
    upward = []
    for imp in graph.imports:
        source, target = layer_of(imp.source, layers, package), layer_of(imp.target, layers, package)
        if source is not None and target is not None and rank[target] > rank[source]:
            upward.append(imp)
    return upward


# --- printing -----------------------------------------------------------------------------------

def layer_graph(graph: ImportGraph, layers: Sequence[Layer] = LAYERS, package: str = PACKAGE
                ) -> dict[str, Counter[str]]:
    """Layer -> {imported layer: number of distinct module-to-module edges} (runtime imports only)."""
    counts: dict[str, Counter[str]] = {layer.name: Counter() for layer in layers}
    for source, targets in graph.runtime_edges().items():
        for target in targets:
            a, b = layer_of(source, layers, package), layer_of(target, layers, package)
            if a is not None and b is not None and a != b:
                counts[a][b] += 1
    return counts


def format_layers(graph: ImportGraph, layers: Sequence[Layer] = LAYERS, package: str = PACKAGE) -> str:
    rank = ranks(layers)
    width = max(len(layer.name) for layer in layers)
    lines = []
    for name, imported in layer_graph(graph, layers, package).items():
        parts = [f"{target} ({n}){' UPWARD' if rank[target] > rank[name] else ''}"
                 for target, n in sorted(imported.items(), key=lambda item: (rank[item[0]], item[0]))]
        lines.append(f"{name:<{width}} -> {', '.join(parts) or '-'}")
    return "\n".join(lines)


def format_modules(graph: ImportGraph) -> str:
    by_source: dict[str, list[Import]] = defaultdict(list)
    for imp in graph.imports:
        by_source[imp.source].append(imp)
    lines = []
    for source in sorted(graph.modules):
        lines.append(source)
        for imp in sorted(by_source[source], key=lambda i: (i.target, i.line)):
            tags = [f", {tag}" for tag, on in (("function-level", imp.function_level),
                                                ("type-checking", imp.type_only)) if on]
            lines.append(f"  -> {imp.target}  (line {imp.line}{''.join(tags)})")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgm_ray.layers", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--modules", action="store_true", help="print module-level import edges")
    mode.add_argument("--check", action="store_true", help="list cycles and upward imports; exit 1 if any")
    args = parser.parse_args(None if argv is None else list(argv))
    graph = import_graph()
    if args.check:
        violations = check(graph)
        for violation in violations:
            print(violation)
        for imp in upward_imports(graph):
            if imp.type_only:
                print(f"note: {imp.source} imports {imp.target} under TYPE_CHECKING at {imp.where} (not counted)")
        print(f"{len(violations)} violation(s) in {len(graph.modules)} modules")
        return 1 if violations else 0
    print(format_modules(graph) if args.modules else format_layers(graph))
    return 0


if __name__ == "__main__":
    sys.exit(main())
