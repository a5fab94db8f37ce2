"""The layout's rules, checked on the source (docs/architecture.md says why):

- no import cycle among edgetl's modules (module-level, function-level and `if TYPE_CHECKING:` imports alike: a
  deferred or type-only import hides a cycle from Python's loader, not from a reader);
- rich only in edgetl/presentation/ and the cli;
- no stage (library) module imports edgetl.presentation;
- every command takes --config;
- at most 12 modules at the top level, and no module whose only users lie in one other package;
- no function over 60 lines; no issue numbers in the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgetl"
PRESENTATION = "edgetl.presentation"
MAY_DRAW = ("edgetl.cli",)  # besides edgetl.presentation: the command line (module or package) wires stages to renderers


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> list[tuple[str, int]]:
    """Every module `module` imports (absolute names, edgetl's and others'), with the line; anywhere in the file,
    `if TYPE_CHECKING:` included: a type-only import still ties one module to the other."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            for alias in node.names:  # `from edgetl.runtime import base` imports the submodule too
                if f"{target}.{alias.name}" in MODULES:
                    found.append((f"{target}.{alias.name}", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def _own(name: str) -> str | None:
    """The edgetl module that importing `name` runs last (the name itself, or the package it lies in)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the edgetl modules its import statements execute. Importing a.b.c also runs a and a.b (their
    __init__); that edge is left out where the importer lies inside that package, which is initialised already."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for name, _ in _imports(module):
            target = _own(name)
            if target is None or target == module:
                continue
            graph[module].add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and not (module + ".").startswith(parent + "."):
                    graph[module].add(parent)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_a_cycle(graph, c) for c in components]


def _a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def _where(module: str, target_prefix: str) -> list[str]:
    return [f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} imports {name}"
            for name, line in _imports(module) if name == target_prefix or name.startswith(target_prefix + ".")]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _draws(module: str) -> bool:
    return any(_under(module, m) for m in MAY_DRAW + (PRESENTATION,))


def _home(module: str) -> str:
    """The top-level module or package a module belongs to: edgetl.ship.fleet -> edgetl.ship."""
    return ".".join(module.split(".")[:2])


# portable/ has a second user that imports it as files: the device script; the cli is the one user of each
# stage's entry module and renderer by design.
SHARED_BY_DESIGN = ("edgetl.portable", "edgetl.presentation", "edgetl.cli", "edgetl.__main__")


def misplaced(graph: dict[str, set[str]]) -> list[str]:
    """Modules every edgetl user of which lies in one other package: they belong in that package."""
    users: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            users.setdefault(target, set()).add(module)
    found = []
    for module in sorted(graph):
        homes = {_home(u) for u in users.get(module, ())}
        if (MODULES.get(module, Path("x.py")).name == "__init__.py" or _home(module) in homes
                or any(_under(module, m) for m in SHARED_BY_DESIGN)
                or any(_under(u, "edgetl.cli") for u in users.get(module, ()))):
            continue
        if len(homes) == 1:
            found.append(f"{module} is used only by {homes.pop()}")
    return found


# -- the checker itself, on a made-up graph -----------------------------------------------------------------
def test_cycle_finder_names_every_cycle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    found = sorted(cycles(graph))
    assert found == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_relative_and_package_imports():
    graph = import_graph()
    assert "edgetl.io" in graph["edgetl.stage"]  # imported inside a function only
    assert "edgetl.errors" in graph["edgetl.stage"]  # module level
    assert "edgetl.runtime" in graph["edgetl.ship.bundle"]  # `from edgetl.runtime import create_backend`: the __init__
    assert "edgetl.presentation.console" in graph["edgetl.presentation.events"]


# -- the rules --------------------------------------------------------------------------------------------------
def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_rich_is_imported_only_by_the_presentation_layer_and_the_cli():
    offenders = [line for m in MODULES if not _draws(m) for line in _where(m, "rich")]
    assert not offenders, "rich outside edgetl/presentation and the cli:\n" + "\n".join(offenders)


def test_no_stage_module_imports_the_presentation_layer():
    offenders = [line for m in MODULES if not _draws(m) for line in _where(m, PRESENTATION)]
    assert not offenders, "edgetl.presentation imported by a stage module:\n" + "\n".join(offenders)


def test_the_top_level_shows_the_architecture():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, f"{len(top)} modules at the top level (at most 12; put the rest in packages): {top}"
    found = misplaced(import_graph())
    assert not found, "\n".join(found)


def test_misplaced_finds_a_helper_with_one_foreign_user():
    graph = {"edgetl.helper": set(), "edgetl.quantize.run": {"edgetl.helper"}, "edgetl.io": set(),
             "edgetl.ship.bundle": {"edgetl.io"}, "edgetl.quantize.int8": {"edgetl.io"}}
    assert misplaced(graph) == ["edgetl.helper is used only by edgetl.quantize"]


def _long_functions(limit: int = 60) -> list[str]:
    found = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_function_is_over_60_lines():
    found = _long_functions()
    assert not found, "split into named steps (plan, then act):\n" + "\n".join(found)


def test_no_issue_numbers_in_the_code():
    import re

    pattern = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)
    found = [f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}" for path in MODULES.values()
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, "say why in words; an issue number means nothing to a reader of the code:\n" + "\n".join(found)


def test_every_command_takes_a_config_file():
    import typer

    from edgetl.cli import app

    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    assert len(commands) >= 10, sorted(commands)
    missing = sorted(name for name, command in commands.items()
                     if not any("--config" in p.opts for p in command.params))
    assert not missing, f"commands without --config: {', '.join(missing)}"


@pytest.mark.parametrize("rule", ["rich", PRESENTATION])
def test_the_rules_would_catch_an_offender(rule, monkeypatch, tmp_path):
    """The checks above are not vacuous: a stage module importing rich (or the presentation layer) inside a
    function is found."""
    fake = tmp_path / "edgetl" / "fake_stage.py"
    fake.parent.mkdir()
    fake.write_text(f"def show():\n    import {rule}.console\n", encoding="utf-8")
    monkeypatch.setitem(MODULES, "edgetl.fake_stage", fake)
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "edgetl")
    assert _where("edgetl.fake_stage", rule) == [f"edgetl/fake_stage.py:2 imports {rule}.console"]


def test_portable_needs_only_the_standard_library_and_numpy():
    """portable/ runs on a bare device too (copied next to the device script): nothing of edgetl outside it,
    nothing installed but numpy."""
    import sys

    # TensorRT and ONNX Runtime: the device's own, imported inside the function that needs them (test_portable.py
    # checks that), so the module still imports with neither.
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__", "tensorrt", "tensorrt_rtx", "onnxruntime"}
    offenders = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name}"
                 for m in MODULES if m == "edgetl.portable" or m.startswith("edgetl.portable.")
                 for name, line in _imports(m)
                 if not (name.startswith("edgetl.portable") or name.split(".")[0] in allowed)]
    assert not offenders, "\n".join(offenders)
