"""The layout's rules, read from the source with `ast` (nothing is imported): imports run one way, worker -> app ->
openseek_nanochat, and no import cycle exists among the project's modules. Every import statement counts, those inside
functions too, at module granularity (`from pkg import mod` imports the submodule mod). The modules are the packages
pyproject.toml lists, so a wheel carries every one; alembic/ installs as app.migrations and must not shadow the
alembic library."""

import ast
import tomllib
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("openseek_nanochat", "app", "worker")
# What each top-level package may not import.
FORBIDDEN = {"openseek_nanochat": ("app", "worker"), "app": ("worker",)}


def package_dirs() -> dict[str, Path]:
    """package name -> folder, as pyproject.toml's [tool.setuptools] lays them out."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools.get("package-dir", {})
    dirs = {}
    for package in setuptools["packages"]:
        top = max((p for p in mapped if package == p or package.startswith(p + ".")), key=len, default=None)
        folder = package if top is None else mapped[top] + package[len(top) :]
        dirs[package] = REPO / folder.replace(".", "/")
    return dirs


def project_modules() -> dict[str, Path]:
    """module name -> file, for every .py file of the listed packages (a package is its __init__.py, if any)."""
    modules = {}
    for package, folder in package_dirs().items():
        for path in folder.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules the module `name` (at `path`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the submodule where there is one, else the name comes from pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module counts as that module; others drop out
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(name, path, modules) for name, path in sorted(modules.items())}


def shortest_cycle(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import path from `start` back to itself, or None."""
    parents, queue = {}, deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if nxt not in parents:
                parents[nxt] = node
                queue.append(nxt)
    return None


def test_the_module_list_is_read_from_the_tree():
    graph = import_graph()
    assert "openseek_nanochat.cli" in graph and "app.main" in graph and "worker.__main__" in graph
    assert "app.migrations.env" in graph  # alembic/env.py, as a wheel installs it


def test_pyproject_lists_every_package_folder():
    listed = {folder.resolve() for folder in package_dirs().values()}
    folders = {path.parent.resolve() for top in (*TOP, "alembic") for path in (REPO / top).rglob("*.py")}
    unlisted = sorted(str(folder.relative_to(REPO)) for folder in folders - listed)
    assert not unlisted, (
        f"folders of Python modules missing from pyproject.toml's packages (a wheel drops them): {unlisted}"
    )


def test_imports_run_one_way():
    wrong = []
    for name, targets in import_graph().items():
        for forbidden in FORBIDDEN.get(name.split(".")[0], ()):
            wrong += [f"{name} imports {target}" for target in sorted(targets) if target.split(".")[0] == forbidden]
    assert not wrong, "imports must run worker -> app -> openseek_nanochat:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    cycles = {}
    for name in graph:
        cycle = shortest_cycle(graph, name)
        if cycle:
            cycles.setdefault(frozenset(cycle), cycle)  # one report per set of modules
    found = [" -> ".join(cycle) for cycle in cycles.values()]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_alembic_is_a_folder_of_migrations_beside_alembic_ini():
    assert (REPO / "alembic.ini").is_file(), "alembic.ini belongs at the repository root (alembic init's layout)"
    assert (REPO / "alembic" / "env.py").is_file()
    assert not (REPO / "alembic" / "__init__.py").exists(), (
        "alembic/__init__.py would make the folder a package that shadows the alembic library"
    )
