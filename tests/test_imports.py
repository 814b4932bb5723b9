"""The package's imports and rooms: light at ``import continual``, no cycle between modules, no
module over 500 lines, and a missing extra named in one line."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import continual

PACKAGE = Path(continual.__file__).parent
OPTIONAL = ("avalanche", "matplotlib", "fastapi", "uvicorn", "torchvision")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE.parent,
        env={"PYTHONPATH": str(PACKAGE.parent), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )


def test_import_continual_loads_no_optional_package():
    done = _python(
        f"import sys, continual\nprint(sorted(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package modules it imports (anywhere in its code,
    function-level imports included; an import of a module's own parent package is not an
    edge: the parent is always imported first)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            found.update(
                target
                for target in targets
                if target in modules and target != name and not name.startswith(target + ".")
            )
        graph[name] = found
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph()
    assert "continual.pool" in graph and "continual.trainer" in graph["continual.learner"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_every_module_of_the_package_stays_under_500_lines():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 40
    assert {name: lines for name, lines in sizes.items() if lines > 500} == {}


def test_a_cycle_is_found_where_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_missing_extra_is_one_line_naming_its_pip_install(tmp_path):
    # Each optional package set to None in sys.modules: importing it fails as if absent.
    block = f"import sys\nfor name in {OPTIONAL!r}: sys.modules[name] = None\n"
    done = _python(block + "import continual.integrations.avalanche")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("continual.extras.MissingExtraError:")
    assert "pip install 'continual[avalanche]'" in last
    assert (
        "ImportError"
        in _python(
            block + "try:\n import continual.integrations.avalanche\n"
            "except ImportError as e:\n print('ImportError', e)"
        ).stdout
    )
    for command, extra in ((["serve", str(tmp_path)], "serve"), (["run", "--quick"], "bench")):
        cli = _python(
            block + f"from continual.cli import main\nraise SystemExit(main({command!r}))"
        )
        assert cli.returncode == 2, cli.stderr
        assert cli.stderr.count("\n") == 1 and f"pip install 'continual[{extra}]'" in cli.stderr
