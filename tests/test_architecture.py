"""The layout is the architecture: imports flow one way, and every module is on the map.

Layers, highest first: entry points (CLIs) -> sweeps -> report -> training -> inference and
config -> callbacks -> models -> data and runs -> utils (a run ends with a sample: training
uses inference). A module may import a lower layer or a module of
its own package; never a higher layer, never round in a cycle.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hw2"

LAYERS = {  # module-name prefix -> rank (higher may import lower)
    "hw2.utils": 0,
    "hw2.data": 1,
    "hw2.runs": 1,
    "hw2.models": 2,
    "hw2.callbacks": 3,
    "hw2.config": 4,
    "hw2.inference": 4,
    "hw2.train": 5,
    "hw2.report": 6,
    "hw2.sweeps": 7,
    "hw2.predict": 8,
    "hw2.evaluate": 8,
    "hw2.report.__main__": 8,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def rank(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len,
               default=None)
    if best is None:
        raise AssertionError(f"{module} has no layer in tests/test_architecture.py: give it one")
    return LAYERS[best]


def package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The hw2 modules `path` imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("hw2"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m, "hw2"} for m, p in mods.items()}


def test_imports_flow_one_way() -> None:
    upward = [f"{a} (layer {rank(a)}) imports {b} (layer {rank(b)})"
              for a, deps in graph().items() for b in sorted(deps)
              if package(a) != package(b) and rank(b) >= rank(a)]
    assert not upward, "upward or sideways imports:\n" + "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_checks_catch_a_cycle_and_an_upward_import() -> None:
    """The checks above can fail: a planted cycle and a planted upward edge are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert rank("hw2.sweeps.gpu_slots") > rank("hw2.train")  # gpu_slots -> train is allowed
    edges = graph()
    edges["hw2.train"] = edges["hw2.train"] | {"hw2.sweeps.gpu_slots"}
    assert find_cycle(edges) is not None  # the cycle the old layout had


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout\n.*?```\n(.*?)```", text, re.S | re.M)
    assert match, "README.md has no '## Layout' section with a code block"
    return match.group(1)


def test_readme_layout_names_every_module() -> None:
    """Each module under hw2/ is on the README's map: `hw2/x.py` for a top-level one, its file
    name on its package's line (`hw2/runs/ ... record.py ...`) for the others."""
    lines = layout_block().splitlines()
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py" and rel.parent == Path("hw2"):
            continue
        if rel.parent == Path("hw2"):
            if not any(f"hw2/{path.name}" in line for line in lines):
                missing.append(str(rel))
            continue
        pkg = f"{rel.parent.as_posix()}/"
        line = next((line for line in lines if line.startswith(pkg)), None)
        if line is None:
            missing.append(f"{pkg} (no line of its own)")
        elif path.name != "__init__.py" and path.name not in line:
            missing.append(str(rel))
    assert not missing, "modules missing from the README's layout: " + ", ".join(missing)


def test_reading_runs_imports_neither_torch_nor_lightning() -> None:
    """The report and the sweep's skip/resume check read run directories: paths, records and
    events, no tensors. Importing torch and Lightning would cost seconds per report."""
    import subprocess
    import sys

    code = ("import sys, hw2.report, hw2.report.runs, hw2.runs.layout, hw2.runs.record; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'lightning') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
