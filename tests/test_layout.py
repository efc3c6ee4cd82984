"""The house rules of docs/design.md, read from the source with `ast`: imports point one way down
the layers and never in a circle, modules stay small, theory and analysis need no torch."""

import ast
from pathlib import Path

import spectra

ROOT = Path(spectra.__file__).parent
#: layers from the bottom; a module may import its own layer or lower ones (design.md)
LAYERS = [
    ("spectra.errors", "spectra.limits", "spectra.schedules", "spectra.lock", "spectra.version",
     "spectra.names"),
    ("spectra.outputs", "spectra.hdf5", "spectra.theory", "spectra.analysis", "spectra.plot",
     "spectra.spec_toml", "spectra.checkpoint", "spectra.arrays", "spectra.dimensions",
     "spectra.theory.memorization", "spectra.theory.representation"),
    ("spectra.models",),
    ("spectra.jacobian", "spectra.store", "spectra.fingerprint", "spectra.distributed", "spectra.sampling",
     "spectra.datasets"),
    ("spectra.sweep",),
    ("spectra.studies", "spectra.studies.representation", "spectra.train", "spectra.sample_files"),
    ("spectra.api",),
    ("spectra",),
]
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("spectra", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The spectra modules a file imports, at any depth (function-level imports included);
    `from spectra.x import y` counts as importing spectra.x.y when that is a module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            out |= subs or ({node.module} & set(known))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def layer(name: str) -> int:
    ranks = [(len(prefix), i) for i, group in enumerate(LAYERS) for prefix in group
             if name == prefix or name.startswith(prefix + ".")]
    assert ranks, f"{name} has no layer in design.md"
    return max(ranks)[1]


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_imports_point_down_the_layers():
    upward = [(a, b) for a, targets in graph().items() for b in targets
              if a != "spectra" and layer(b) > layer(a)]
    assert not upward, upward


def test_modules_are_small_or_one_algorithm():
    large = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "one algorithm" not in doc:
            large.append((name, lines))
    assert not large, large


def test_theory_and_analysis_import_no_torch():
    for name, path in modules().items():
        if name.startswith(("spectra.theory", "spectra.analysis", "spectra.spec_toml")):
            tree = ast.parse(path.read_text())
            names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert not any(m == "torch" or m.startswith("torch.") for m in names), name


def test_the_checker_sees_a_cycle(tmp_path):
    """The cycle test is not vacuous: the checker finds the circle the house once had."""
    known = {"spectra.a": tmp_path / "a.py", "spectra.b": tmp_path / "b.py"}
    known["spectra.a"].write_text("def f():\n    from spectra.b import g\n")
    known["spectra.b"].write_text("from spectra import a\n")
    assert imports(known["spectra.a"], known) == {"spectra.b"}
    assert imports(known["spectra.b"], known) == {"spectra.a"}
