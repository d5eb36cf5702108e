"""The package's import graph: layers point one way, no cycles, no private names across modules.

cli -> commands -> {engine, report} -> models -> config / data -> io, errors, structures.
The report only draws and writes: it imports nothing from engine or models. Every import inside
the package is relative (imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "defectfusion"

# What each layer may import from the package (besides itself).
ALLOWED: dict[str, set[str]] = {
    "cli": {"commands", "engine", "report", "models", "config", "data", "io", "errors", "structures"},
    "commands": {"engine", "report", "models", "config", "data", "io", "errors", "structures"},
    "engine": {"models", "config", "data", "io", "errors", "structures"},
    "report": {"config", "data", "io", "errors", "structures"},
    "models": {"config", "data", "io", "errors", "structures"},
    "data": {"config", "io", "errors", "structures"},
    "config": {"errors"},
    "io": {"errors"},
    "structures": set(),
    "errors": set(),
    "version": set(),
}
for _layer_imports in ALLOWED.values():
    _layer_imports.add("version")  # the version string, readable from anywhere
TOP = {"__init__", "__main__"}  # the package face and entry point may import anything


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(imported module, names taken, line, written relative) for every import of a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target.startswith("defectfusion"):
                # `from . import plots` imports a module, not a name
                modules = [
                    f"{target}.{n}"
                    for n in names
                    if (PACKAGE.parent / f"{target}.{n}".replace(".", "/")).exists()
                    or (PACKAGE.parent / (f"{target}.{n}".replace(".", "/") + ".py")).exists()
                ]
                for m in modules:
                    found.append((m, [], node.lineno, bool(node.level)))
                rest = [n for n in names if f"{target}.{n}" not in modules]
                if rest or not modules:
                    found.append((target, rest, node.lineno, bool(node.level)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("defectfusion"):
                    found.append((alias.name, [], node.lineno, False))
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_import_points_down_the_layers_and_is_relative():
    problems = []
    for path in _sources():
        here = _module_name(path)
        layer = _layer(here)
        for target, _names, line, relative in _imports(path):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if not relative:
                problems.append(f"{where}: absolute import of {target} (use a relative import)")
            other = _layer(target)
            if layer in TOP or other == layer:
                continue
            if other not in ALLOWED.get(layer, set()):
                problems.append(f"{where}: {layer} imports {target} ({other} is not below {layer})")
    assert not problems, "\n".join(problems)


# Inside engine/, one package per concern; what each may import of the others. Prediction and
# evaluation never import training: a deployed predictor or an evaluation carries no trainer.
ENGINE_ALLOWED: dict[str, set[str]] = {
    "prediction": set(),
    "evaluation": {"prediction"},
    "export": {"prediction", "evaluation"},
    "explain": {"prediction", "evaluation"},
    "study": {"evaluation"},
    "training": {"prediction", "evaluation", "explain"},
}


def _concern(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "engine" else None


def test_engine_is_grouped_by_concern_and_its_packages_point_one_way():
    engine = PACKAGE / "engine"
    loose = [p.name for p in engine.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules directly in engine/ (put each in its concern's package): {loose}"
    assert {p.name for p in engine.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ENGINE_ALLOWED)
    problems = []
    for path in sorted(engine.rglob("*.py")):
        here = _concern(_module_name(path))
        for target, _names, line, _ in _imports(path):
            there = _concern(target)
            if here and there and there != here and there not in ENGINE_ALLOWED[here]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: engine.{here} imports {target}")
    assert not problems, "\n".join(problems)


def test_no_private_name_is_used_outside_its_module():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_aliases = set()
        for target, names, line, _ in _imports(path):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports private {name} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                module_aliases.update(a.asname or a.name for a in node.names)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
            ):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: uses {node.value.id}.{node.attr}")
    assert not problems, "\n".join(problems)


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for path in _sources():
        here = _module_name(path)
        graph.setdefault(here, set())
        for target, _, _, _ in _imports(path):
            if target in graph or any(_module_name(p) == target for p in _sources()):
                graph[here].add(target)
    # A package's __init__ re-exporting its modules is not a cycle of logic.
    faces = {m for m in graph if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").is_file()}
    edges = {m: {t for t in ts if t not in faces and t != m} for m, ts in graph.items() if m not in faces}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_every_module_is_under_400_lines():
    long = [
        f"{p.relative_to(PACKAGE.parent)}: {n}"
        for p in _sources()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420
    ]
    assert not long, "modules over ~400 lines (split them by job):\n" + "\n".join(long)


def test_every_module_imports():
    import importlib

    for path in _sources():
        if path.name != "__main__.py":
            importlib.import_module(_module_name(path))
