"""The architecture of ``particlesim/``, read from its import statements (DESIGN.md, Layout).

The rules:

* no import cycles between the modules of ``particlesim/``;
* ``particlesim.core`` imports nothing from ``particlesim.io``, ``particlesim.cli`` or
  ``particlesim.analysis``, neither directly nor through another module (core is plain
  torch; I/O and the CLI sit above it);
* nothing under ``particlesim/`` imports a plugin package (a top-level module named
  ``particlesim_*``): ``plugins/`` imports ``particlesim``, never the reverse.

The graph is built here with :mod:`ast` (no import runs), from every import statement of a
module: at module level and inside functions, classes and ``try`` blocks alike, since a lazy
import is still a dependency (and still a cycle: the module cannot be understood, moved or
tested without the other). Relative imports are resolved. Imports under
``if TYPE_CHECKING:`` never run, so they do not count toward cycles, but they do count as
dependencies for the layer rules. ``importlib.import_module("name")`` and
``__import__("name")`` with a literal name count as imports too.

An edge ``a → b`` means that importing ``a`` (or calling into it) executes module ``b``:
``import p.q.r`` and ``from p.q import r`` execute ``p``, ``p.q`` and ``p.q.r``, so each is
an edge, except the importer's own enclosing packages (which Python has run before it).

The functions below are tested on small synthetic graphs and a synthetic package too, so
that each rule is known to be able to fail.
"""

from __future__ import annotations

import ast
import itertools
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "particlesim"
#: Layer rules: modules under each key import nothing under any of its values.
FORBIDDEN = {
    "particlesim.core": ("particlesim.io", "particlesim.cli", "particlesim.analysis"),
}
#: Top-level names of plugin packages (``plugins/particlesim_lange`` …).
PLUGIN_PREFIX = "particlesim_"


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Import:
    """One import of ``module`` (file ``path``, line ``line``): the absolute name imported.

    ``name`` is a module or a module's attribute (``from m import x`` gives ``m.x``; which
    one it is is decided against the known modules later). ``type_only``: under
    ``if TYPE_CHECKING:``.
    """

    module: str
    name: str
    path: str
    line: int
    type_only: bool = False


def discover(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root``: dotted name → file (a package: its __init__)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import …`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(base) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_import(node: ast.Call) -> str | None:
    """The literal name of ``importlib.import_module("x")`` / ``__import__("x")``, else None."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imports_of(module: str, path: Path) -> list[Import]:
    """Every import written anywhere in ``module``'s file (module level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(module, is_package, node.level, node.module)
            names = [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)) is not None:
            names = [name]
        for name in names:
            found.append(Import(module, name, str(path), getattr(node, "lineno", 0), type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def package_imports(root: Path = ROOT, package: str = PACKAGE) -> tuple[list[Import], set[str]]:
    """Every import in ``package`` and the names of its modules."""
    modules = discover(root, package)
    imports = [i for name, path in modules.items() for i in imports_of(name, path)]
    return imports, set(modules)


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def executed_modules(name: str, modules: set[str]) -> list[str]:
    """The known modules that importing ``name`` executes: its packages, then itself.

    ``name`` may end in an attribute (``from m import x``): the longest known prefix is the
    module. Unknown names (other distributions) give nothing.
    """
    target = name
    while target and target not in modules:
        target = target.rpartition(".")[0]
    if not target:
        return []
    return [m for m in (*_ancestors(target), target) if m in modules]


def edges_of(
    imports: Iterable[Import], modules: set[str], *, type_checking: bool
) -> dict[str, dict[str, Import]]:
    """``importer → {imported module → the first import making that edge}``.

    ``type_checking=False`` leaves out the imports under ``if TYPE_CHECKING:``. An
    importer's own enclosing packages are not edges (they ran before it).
    """
    graph: dict[str, dict[str, Import]] = {m: {} for m in modules}
    for imp in imports:
        if imp.type_only and not type_checking:
            continue
        own = {imp.module, *_ancestors(imp.module)}
        for target in executed_modules(imp.name, modules):
            if target not in own:
                graph.setdefault(imp.module, {}).setdefault(target, imp)
    return graph


# --------------------------------------------------------------------------- the checks


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of 2+ modules, sorted.

    (Tarjan's algorithm, iterative so that a deep graph cannot exhaust the stack.)
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    nodes = set(graph) | {w for targets in graph.values() for w in targets}
    successors = {v: sorted(graph.get(v, ())) for v in nodes}
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            if i < len(successors[v]):
                work.append((v, i + 1))
                w = successors[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if work:  # v is done: its caller inherits its low-link
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return sorted(cycles)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def forbidden_paths(
    graph: Mapping[str, Iterable[str]], rules: Mapping[str, Iterable[str]]
) -> list[list[str]]:
    """Every way a module under a rule's key reaches a module under one of its values.

    A path is ``[importer, …, forbidden module]``, the shortest one for each pair, so a
    direct import is a path of two and an import through a third module (``core`` →
    ``scenario`` → ``io``) is caught as well, since it drags the layer in just the same.
    """
    paths = []
    for source in sorted(graph):
        for prefix, forbidden in rules.items():
            if not _within(source, prefix):
                continue
            previous: dict[str, str] = {}
            queue = [source]
            for node in queue:  # breadth first: the first path found is a shortest one
                for target in sorted(graph.get(node, ())):
                    if target in previous or target == source:
                        continue
                    previous[target] = node
                    if any(_within(target, f) for f in forbidden):
                        path = [target]
                        while path[-1] != source:
                            path.append(previous[path[-1]])
                        paths.append(path[::-1])
                    else:
                        queue.append(target)
    return sorted(paths)


def plugin_imports(imports: Iterable[Import], prefix: str = PLUGIN_PREFIX) -> list[Import]:
    """The imports of a plugin package: a top-level name starting with ``prefix``."""
    return [i for i in imports if i.name.split(".")[0].startswith(prefix)]


def _where(imp: Import) -> str:
    """``file:line`` of an import, relative to the repository where it lies inside it."""
    path = Path(imp.path)
    return f"{path.relative_to(ROOT) if ROOT in path.parents else path}:{imp.line}"


def describe_cycle(cycle: list[str], graph: Mapping[str, Mapping[str, Import]]) -> str:
    """``a <-> b`` and, under it, each edge inside the cycle with the line that makes it."""
    members = set(cycle)
    lines = [" <-> ".join(cycle)]
    for source in cycle:
        for target, imp in sorted(graph.get(source, {}).items()):
            if target in members:
                lines.append(f"    {source} -> {target}  ({_where(imp)}: {imp.name})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- particlesim itself


def test_particlesim_has_no_import_cycles() -> None:
    imports, modules = package_imports()
    assert len(modules) > 50, f"found only {len(modules)} modules under {ROOT / PACKAGE}"
    graph = edges_of(imports, modules, type_checking=False)
    cycles = find_cycles(graph)
    report = "\n".join(describe_cycle(c, graph) for c in cycles)
    if report:
        print(report)
    assert not cycles, f"{len(cycles)} import cycle(s) in {PACKAGE}/:\n{report}"


def test_core_imports_no_io_cli_or_analysis() -> None:
    imports, modules = package_imports()
    graph = edges_of(imports, modules, type_checking=True)
    bad = forbidden_paths(graph, FORBIDDEN)
    report = "\n".join(
        " -> ".join(path)
        + "".join(f"\n    {_where(graph[a][b])}" for a, b in itertools.pairwise(path))
        for path in bad
    )
    assert not bad, f"core imports a layer above it (DESIGN.md, Layout):\n{report}"


def test_particlesim_imports_no_plugin_package() -> None:
    imports, _ = package_imports()
    bad = plugin_imports(imports)
    report = "\n".join(f"{_where(i)}: {i.module} imports {i.name}" for i in bad)
    assert not bad, f"{PACKAGE}/ imports a plugin package (plugins/ -> {PACKAGE} only):\n{report}"


# --------------------------------------------------------------------------- the checks can fail


def test_find_cycles_reports_each_cycle_once() -> None:
    graph = {
        "p.a": {"p.b"},
        "p.b": {"p.c"},
        "p.c": {"p.a", "p.d"},  # a -> b -> c -> a
        "p.d": {"p.e"},
        "p.e": {"p.d"},  # d <-> e, reached from the first cycle
        "p.f": {"p.a"},  # outside, points in
    }
    assert find_cycles(graph) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]
    assert find_cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": set()}) == []
    # a long chain closing on itself (the iterative walk has no recursion limit)
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)} | {"m5000": {"m0"}}
    assert [len(c) for c in find_cycles(chain)] == [5001]


def test_forbidden_paths_reports_core_importing_a_layer_above() -> None:
    graph = {
        "particlesim.core": {"particlesim.core.system"},
        "particlesim.core.system": {"particlesim.kernels.ops", "particlesim.io.h5md"},
        "particlesim.core.writers": {"particlesim.cli"},
        "particlesim.io.h5md": {"particlesim.core.system"},  # io -> core is the right way
        "particlesim.iox": set(),
        "particlesim.core.model": {"particlesim.iox", "particlesim.scenario"},
        "particlesim.scenario": {"particlesim.analysis.plots"},  # core -> scenario -> analysis
    }
    assert forbidden_paths(graph, FORBIDDEN) == [
        ["particlesim.core", "particlesim.core.system", "particlesim.io.h5md"],
        ["particlesim.core.model", "particlesim.scenario", "particlesim.analysis.plots"],
        ["particlesim.core.system", "particlesim.io.h5md"],
        ["particlesim.core.writers", "particlesim.cli"],
    ]
    fine = {"particlesim.core.x": {"particlesim.kernels"}, "particlesim.kernels": set()}
    assert forbidden_paths(fine, FORBIDDEN) == []


def test_plugin_imports_reports_a_plugin_package() -> None:
    imports = [
        Import("particlesim.scenario.builder", "particlesim_lange.model", "b.py", 3),
        Import("particlesim.cli.app", "particlesim_shader", "a.py", 9, type_only=True),
        Import("particlesim.cli.app", "particlesim.plugins.manager", "a.py", 10),
        Import("particlesim.cli.app", "particlesimulator", "a.py", 11),
    ]
    assert [(i.module, i.name) for i in plugin_imports(imports)] == [
        ("particlesim.scenario.builder", "particlesim_lange.model"),
        ("particlesim.cli.app", "particlesim_shader"),
    ]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_graph_of_a_synthetic_package(tmp_path: Path) -> None:
    """Lazy and relative imports make edges; TYPE_CHECKING ones only for the layer rules."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/core/__init__.py": "from .engine import Engine\n",
            "pkg/core/engine.py": """
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.io.writer import Writer  # type-only: no cycle, still a layer breach

                class Engine:
                    def save(self):
                        from ..io import writer  # lazy and relative: still an edge
                        return writer
            """,
            "pkg/io/__init__.py": "",
            "pkg/io/writer.py": """
                import importlib
                from pkg.core.engine import Engine

                def plugin():
                    return importlib.import_module("particlesim_extra.kernels")
            """,
            "pkg/cli.py": "from . import core\nimport pkg.io.writer as w\n",
        },
    )
    modules = discover(tmp_path, "pkg")
    assert set(modules) == {
        "pkg",
        "pkg.core",
        "pkg.core.engine",
        "pkg.io",
        "pkg.io.writer",
        "pkg.cli",
    }
    imports = [i for name, path in modules.items() for i in imports_of(name, path)]
    runtime = {s: set(t) for s, t in edges_of(imports, set(modules), type_checking=False).items()}
    assert runtime["pkg.core.engine"] == {"pkg.io", "pkg.io.writer"}
    assert runtime["pkg.io.writer"] == {"pkg.core", "pkg.core.engine"}
    assert runtime["pkg.cli"] == {"pkg.core", "pkg.io", "pkg.io.writer"}
    assert runtime["pkg.core"] == {"pkg.core.engine"}  # its own package is no edge
    assert find_cycles(runtime) == [["pkg.core", "pkg.core.engine", "pkg.io.writer"]]

    every = edges_of(imports, set(modules), type_checking=True)
    rules = {"pkg.core": ("pkg.io", "pkg.cli")}
    assert forbidden_paths(every, rules) == [
        ["pkg.core", "pkg.core.engine", "pkg.io"],
        ["pkg.core", "pkg.core.engine", "pkg.io.writer"],
        ["pkg.core.engine", "pkg.io"],
        ["pkg.core.engine", "pkg.io.writer"],
    ]
    engine_imports = [i for i in imports if i.module == "pkg.core.engine"]
    assert {(i.name, i.type_only) for i in engine_imports} >= {
        ("pkg.io.writer.Writer", True),
        ("pkg.io.writer", False),
    }
    assert [(i.module, i.name) for i in plugin_imports(imports)] == [
        ("pkg.io.writer", "particlesim_extra.kernels")
    ]


def test_resolve_relative() -> None:
    assert resolve_relative("p.a.b", False, 1, "c") == "p.a.c"
    assert resolve_relative("p.a.b", False, 2, None) == "p"
    assert resolve_relative("p.a", True, 1, "c") == "p.a.c"  # in p/a/__init__.py
    assert resolve_relative("p.a", True, 2, "c") == "p.c"
    assert resolve_relative("p.a.b", False, 0, "x.y") == "x.y"
