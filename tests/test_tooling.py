"""The project's lint and type gates run as part of the test suite."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_applied() -> None:
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_on_the_packages() -> None:
    """The files in [tool.mypy]: the packages strictly, benchmarks, and tests/ under a relaxed override."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tests_share_helpers_through_modules_never_through_conftest_or_a_test_file() -> None:
    """What tests share lives in helper modules (tests/budget/broker.py, tests/sim/scenarios.py, ...)
    imported by their full name; a conftest.py holds fixtures only and no test file is imported."""
    tests = ROOT / "tests"
    helpers = {path.stem for path in tests.rglob("*.py")}
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if (
                    name.startswith(".")  # one import mode: absolute names only
                    or parts[0] in helpers  # a sibling found only because pytest put its folder on sys.path
                    or any(part == "conftest" or part.startswith("test_") for part in parts)
                ):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert wrong == []


def test_every_test_folder_is_a_package_and_its_conftest_holds_fixtures_only() -> None:
    tests = ROOT / "tests"
    folders = {path.parent for path in tests.rglob("*.py")}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []
    not_fixtures = []
    for conftest in sorted(tests.rglob("conftest.py")):
        for node in ast.parse(conftest.read_text()).body:
            if isinstance(node, ast.Import | ast.ImportFrom) or _is_docstring(node):
                continue
            if isinstance(node, ast.FunctionDef) and (node.name.startswith("pytest_") or _is_fixture(node)):
                continue
            not_fixtures.append(f"{conftest.relative_to(ROOT)}:{node.lineno}")
    assert not_fixtures == []


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _is_fixture(function: ast.FunctionDef) -> bool:
    """Decorated with pytest.fixture, bare or called."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if ast.unparse(target) in ("pytest.fixture", "fixture"):
            return True
    return False


def test_import_layers_hold() -> None:
    """The contracts in pyproject.toml: one-way layers, budget never imports sim, a pure core."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Exception classes that live beside their code on purpose, by "module.Class".
@pytest.mark.parametrize("package", ["budget", "sim"])
def test_every_exception_class_lives_in_the_errors_module(package: str) -> None:
    """One home for a package's errors (PACKAGE/errors.py), whose docstring draws every one of them."""
    errors = importlib.import_module(f"{package}.errors")
    elsewhere = set()
    for module_info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
        if module_info.name.endswith(".__main__"):
            continue  # running it is all it does
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                elsewhere.add(f"{module.__name__}.{name}")
    home = {name for name in elsewhere if name.startswith(f"{package}.errors.")}
    assert elsewhere - home == set()
    drawn = (errors.__doc__ or "").split()
    assert [name for name in sorted(home) if name.rsplit(".", 1)[1] not in drawn] == []


def test_no_module_imports_itself_back() -> None:
    """No import circle, also not through an import inside a function or under TYPE_CHECKING."""
    graph = grimp.build_graph("budget", "sim", "benchmarks")
    circles = _circles({m: graph.find_modules_directly_imported_by(m) for m in graph.modules})
    assert circles == [], circles


def _circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(imports):
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(imports.get(child, set())))))
                elif child in on_stack:
                    low[module] = min(low[module], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
