"""The layering of ``src/matfunnel``: data flows one way, no upward import, no import cycle.

The allowed order is written here, lowest first. A package may import packages of its own layer's lower
layers only (and itself). Modules inside one package must not import each other in a cycle. Imports are
read from the source (``import``/``from ... import`` anywhere, including inside functions), so a hidden
function-level import counts the same as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "matfunnel"

#: lowest first; packages on one line are siblings and must not import each other
LAYERS: list[set[str]] = [
    {"common"},                                     # units, structure coercion, store, result cache, errors
    {"potential"},                                  # models: our CHGNet/MatRIS, adapters, registry
    {"engine"},                                     # batched relaxation and MD on a potential
    {"makers"},                                     # jobflow makers around the engine
    {"candidates", "hull", "dft", "phonons"},       # the stages
    {"benchmark", "train"},                         # external benchmarks and self-scoring; fine-tuning
    {"campaign"},                                   # wiring of the stages, I/O
    {"cli"},                                        # the command line
]
#: top-level modules of the package that are not packages: their layer
MODULES = {"__init__": "common", "cli": "cli"}


def _rank() -> dict[str, int]:
    return {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def _package(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return MODULES["__init__"]
    return MODULES.get(parts[1], parts[1])


def _exists(module: str, src: Path) -> bool:
    rel = Path(*module.split(".")[1:])
    return (src / rel).with_suffix(".py").is_file() or (src / rel / "__init__.py").is_file()


def _imports(path: Path, src: Path) -> dict[str, int]:
    """``{imported matfunnel module: line}`` of one file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = _module_name(path, src).split(".")
    if path.name != "__init__.py":
        own = own[:-1]
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("matfunnel"):
                    out.setdefault(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join(own[: len(own) - node.level + 1] + [node.module or ""]).rstrip(".") if node.level \
                else node.module or ""
            if not mod.startswith("matfunnel"):
                continue
            for alias in node.names:  # ``from matfunnel.x import y`` may import the submodule y
                sub = f"{mod}.{alias.name}"
                out.setdefault(sub if _exists(sub, src) else mod, node.lineno)
    return out


def _graph(src: Path) -> dict[str, dict[str, int]]:
    return {_module_name(p, src): _imports(p, src) for p in sorted(src.rglob("*.py"))}


def upward_imports(src: Path = SRC) -> list[str]:
    """Every import of a package of the same or a higher layer, as ``module:line imports target``."""
    rank = _rank()
    bad = []
    for mod, imports in _graph(src).items():
        pkg = _package(mod)
        for target, line in imports.items():
            tpkg = _package(target)
            if tpkg != pkg and rank[tpkg] >= rank[pkg]:
                bad.append(f"{mod}:{line} imports {target} ({pkg} -> {tpkg})")
    return bad


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """Cycles among modules (a module importing a package imports its ``__init__``)."""
    graph = {m: {t for t in imps if t != m} for m, imps in _graph(src).items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if t not in graph:
                continue
            if state.get(t) == 1:
                cycles.append([*stack[stack.index(t):], t])
            elif not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m)
    return cycles


def test_every_package_has_a_layer():
    found = {_package(_module_name(p, SRC)) for p in SRC.rglob("*.py")}
    missing = found - set(_rank())
    assert not missing, f"packages without a layer in tests/test_layers.py: {sorted(missing)}"


def test_no_upward_or_sideways_import():
    bad = upward_imports()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle():
    cycles = import_cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """A planted upward import, a planted sideways import and a planted cycle are each found."""
    pkg = tmp_path / "matfunnel"
    for sub in ("common", "potential", "hull", "phonons"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "common" / "a.py").write_text("from matfunnel.potential import b\n")
    (pkg / "potential" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "potential" / "c.py").write_text("from matfunnel.potential.b import f\n")
    (pkg / "hull" / "h.py").write_text("import matfunnel.phonons.p\n")
    (pkg / "phonons" / "p.py").write_text("")
    bad = upward_imports(pkg)
    assert any("matfunnel.common.a:1 imports matfunnel.potential.b (common -> potential)" in b for b in bad), bad
    assert any("(hull -> phonons)" in b for b in bad), bad
    assert len(bad) == 2, bad
    assert import_cycles(pkg) == [["matfunnel.potential.b", "matfunnel.potential.c", "matfunnel.potential.b"]]
