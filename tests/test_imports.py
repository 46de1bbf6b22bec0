"""The package's import structure: what importing a module loads, and no import circles between its modules.

The graph of imports between rl_lightning's modules is read from the source with ``ast`` (every ``import``
statement: at module level, under ``if TYPE_CHECKING:`` and inside functions), with these rules:

- Importing ``a.b.c`` runs the ``__init__`` of ``a`` and of ``a.b`` first: every module imports its packages.
- A package ``__init__`` re-exports its names lazily (PEP 562 ``__getattr__``) and declares them with imports under
  ``if TYPE_CHECKING:``. Those declarations run nothing, so they are not edges; they tell where each name is
  defined, and ``from package import Name`` is an edge to that module. Any other import in a package ``__init__``
  runs whenever one of the package's modules is imported, and is an edge like any other (so an eager package
  ``__init__`` that imports its own modules is a circle: they import it back).
- ``from package import module`` is an edge to the module.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rl_lightning"
VIDEO_LIBRARIES = ("imageio", "imageio_ffmpeg", "moviepy")
"""What ``rl_lightning.recording`` imports to write videos (in its functions)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    paths = [*PACKAGE.glob("*.py"), *PACKAGE.glob("*/*.py")]
    return {_module_name(path): (path, ast.parse(path.read_text(), str(path))) for path in sorted(paths)}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of ``tree`` and whether it sits under ``if TYPE_CHECKING:``."""

    def visit(node: ast.AST, type_checking: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_checking
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, type_checking)

    yield from visit(tree, False)


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _packages(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    packages = {name for name, (path, _) in sources.items() if path.name == "__init__.py"}
    exports: dict[str, dict[str, str]] = {package: {} for package in packages}
    for package in packages:
        for node, type_checking in _imports(sources[package][1]):
            if isinstance(node, ast.ImportFrom) and (type_checking or node.level == 0):
                source = _absolute(package, node, is_package=True)
                for alias in node.names:
                    exports[package][alias.asname or alias.name] = source

    def defining_module(package: str, name: str) -> str:
        if f"{package}.{name}" in sources:
            return f"{package}.{name}"
        source = exports[package].get(name, package)
        return defining_module(source, name) if source in packages and source != package else source

    graph: dict[str, set[str]] = {name: set(_packages(name)) for name in sources}
    for name, (path, tree) in sources.items():
        is_package = path.name == "__init__.py"
        for node, type_checking in _imports(tree):
            if is_package and type_checking:
                continue  # a lazy re-export's declaration (see the module docstring)
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _absolute(name, node, is_package)
                for alias in node.names:
                    targets.append(defining_module(source, alias.name) if source in packages else source)
            for target in targets:
                if target in sources:
                    graph[name].update({target, *_packages(target)} - {name})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (its first module repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_modules_import_each_other_one_way() -> None:
    graph = _graph()
    assert "rl_lightning.module" in graph and "rl_lightning.callbacks.rl_callback" in graph
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_circles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", ["rl_lightning", "rl_lightning.algorithms", "rl_lightning.callbacks"])
def test_packages_export_lazily_what_they_declare(package: str) -> None:
    """Every name in ``__all__`` is declared under ``if TYPE_CHECKING:`` (what mypy and IDEs read) and is, at run
    time, the object of the module it is declared from."""
    import importlib

    tree = _sources()[package][1]
    declared = {
        alias.asname or alias.name: _absolute(package, node, is_package=True)
        for node, type_checking in _imports(tree)
        if type_checking and isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    module = importlib.import_module(package)
    assert sorted(declared) == sorted(module.__all__)
    assert set(module.__all__) <= set(dir(module))
    for name, source in declared.items():
        defined = importlib.import_module(source)
        expected = defined if source == f"{package}.{name}" else getattr(defined, name)
        assert getattr(module, name) is expected, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        getattr(module, "Nope")  # noqa: B009


def test_importing_the_module_does_not_load_video_recording() -> None:
    unwanted = ("rl_lightning.recording", *VIDEO_LIBRARIES)
    code = f"import sys, rl_lightning.module\nprint(sorted(m for m in sys.modules if m.startswith({unwanted})))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


@pytest.mark.parametrize("name", ["torchrl_module", "torchrl_off_policy", "torchrl_data"])
def test_an_interop_module_without_torchrl_names_the_environment_that_has_it(name: str) -> None:
    if importlib.util.find_spec("torchrl") is not None:
        pytest.skip("torchrl is importable here (the torchrl environment)")
    with pytest.raises(ImportError, match=rf"rl_lightning\.interop\.{name} needs torchrl.*scripts/setup_torchrl\.sh"):
        importlib.import_module(f"rl_lightning.interop.{name}")
