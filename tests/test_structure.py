"""The code's shape rules (docs/DESIGN.md, "Code layout"): small files, short functions, no import cycles.

The rules are read from the source with `ast`, so they hold for code that no test happens to run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sd2_app"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py")) + [ROOT / "app.py"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (annotations only; never run)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                inside.update(id(child) for child in ast.walk(node))
    return inside


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside a function (TYPE_CHECKING excluded)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sd2_app"):
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("sd2_app")]
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_file_is_over_the_line_limit() -> None:
    too_long = {str(path.relative_to(ROOT)): n for path in _sources()
                if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert too_long == {}


def test_no_function_is_over_the_line_limit() -> None:
    too_long = {}
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # the def line to the last line, docstring included
                if length > MAX_FUNCTION_LINES:
                    too_long[f"{path.relative_to(ROOT)}:{node.name}"] = length
    assert too_long == {}


def test_the_package_has_no_import_cycle() -> None:
    """Function-local imports count too: hiding an import in a function does not break a cycle."""
    assert find_cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def bare_helper_imports(tests: Path) -> list[str]:
    """Imports of a shared test helper (a module in tests/ that is not a test) by its bare name: it would be a
    second module object beside `tests.<name>`, with its own copy of the module's state."""
    helpers = {path.stem for path in tests.glob("*.py") if not path.stem.startswith(("test_", "conftest"))}
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.relative_to(tests.parent)}:{node.lineno}" for name in names
                      if name.split(".")[0] in helpers]
    return found


def test_the_shared_test_helpers_are_imported_one_way(tmp_path: Path) -> None:
    assert bare_helper_imports(ROOT / "tests") == []
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "fixtures.py").write_text("STATE = {}\n")
    (tmp_path / "tests" / "test_a.py").write_text("from tests.fixtures import STATE\nimport fixtures\n")
    assert bare_helper_imports(tmp_path / "tests") == ["tests/test_a.py:2"]
