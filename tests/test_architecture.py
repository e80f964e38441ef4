"""The package's layers, enforced: every import in src/kiln (lazy ones inside functions included) points
down the layers, and no two modules import each other, directly or through others. The `--help` check runs
a fresh interpreter per command and is marked slow by itself; the import graph is read, not run."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src" / "kiln"

# part (the first name under kiln) -> layer; a part may import only parts of a lower layer
LAYERS = {
    # errors, the version and the process's signal state: what everything may use
    "errors": 0,
    "_version": 0,
    "signals": 0,
    "atomic": 1,  # atomic file writes (a write is a critical section for signals)
    "spec": 1,  # the model's input: ImageSpec, Preprocess
    # the leaf layer
    "config": 2,
    "registry": 2,
    "console": 2,
    "paths": 2,
    "checkpoint": 2,
    "recipe": 2,  # what a trained model is: its network, input (spec) and classes
    # the parts, independent of each other
    "data": 3,
    "models": 3,
    "optim": 3,
    "losses": 3,
    "metrics": 3,
    "engine": 4,
    "evaluation": 5,
    "export": 5,
    "tuning": 5,
    "scaffold": 5,
    "inference": 6,  # loading any artifact and running it on image files (predict, Triton, serve)
    "serving": 7,
    # the command line, the public package root, `python -m kiln`
    "cli": 8,
    "__init__": 8,
    "__main__": 9,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def imports(path: Path) -> list[tuple[str, int]]:
    """(imported kiln module, line) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    known = {module_name(p) for p in SRC.rglob("*.py")}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "kiln"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "kiln":
                continue
            # `from kiln import data` imports kiln.data; `from kiln.x import name` imports kiln.x
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            out += [(m, node.lineno) for m in subs] or [(base, node.lineno)]
    return [(m, line) for m, line in out if m != me]


def graph() -> dict[str, list[tuple[str, str, int]]]:
    """module -> [(imported module, file, line)]"""
    g: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        for target, line in imports(path):
            g[module_name(path)].append((target, str(path.relative_to(ROOT)), line))
    return g


def test_every_part_has_a_layer() -> None:
    parts = {part_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert parts <= set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for module, targets in graph().items():
        src = part_of(module)
        for target, file, line in targets:
            dst = part_of(target)
            if dst != src and LAYERS[dst] >= LAYERS[src]:
                wrong.append(
                    f"{file}:{line}: {module} (layer {LAYERS[src]}) imports {target} (layer {LAYERS[dst]})"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("level", ["part", "module"])
def test_no_import_cycles(level: str) -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph().items():
        for target, _, _ in targets:
            a, b = (part_of(module), part_of(target)) if level == "part" else (module, target)
            if a != b:
                edges[a].add(b)
    assert not _cycles(edges), f"{level}s that import each other: {_cycles(edges)}"


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The walker itself: an import inside a function counts, and `from kiln import x` means kiln.x."""
    found = {m for m, _ in imports(SRC / "models" / "restore.py")}
    assert {"kiln.checkpoint", "kiln.config", "kiln.models"} <= found
    lazy = {m for m, _ in imports(SRC / "cli" / "train.py")}
    assert "kiln.engine.trainer" in lazy  # imported inside run()


@pytest.mark.slow  # a fresh interpreter (a subprocess) per command
@pytest.mark.parametrize(
    "command",
    [[], ["train"], ["lr-find"], ["eval"], ["export"], ["predict"], ["tune"], ["new"], ["check-data"]],
)
def test_help_imports_no_torch(command: list[str]) -> None:
    code = (
        "import sys\nfrom kiln.cli import main\n"
        "try:\n    main([*sys.argv[1:], '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'pydantic', 'yaml') if m in sys.modules)\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: kiln" in proc.stdout, proc.stdout[-300:]
    assert "HEAVY []" in proc.stdout, proc.stdout[-300:]
