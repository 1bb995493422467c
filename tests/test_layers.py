"""The layout is the pipeline: imports flow one way along it. A module may import shared
services and the stages before its own, never a later stage (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import trtc

PACKAGE = Path(trtc.__file__).parent
# Shared services (0), the stages in pipeline order (1-5), the typed API and CLI on top (6).
LAYERS = {
    "errors": 0, "fileio": 0, "memory": 0, "ir": 0, "reference": 0,
    "frontend": 1, "loading": 1,
    "passes": 2,
    "precision": 3,
    "lower": 4,
    "runtime": 5,
    "pipeline": 6, "report": 6, "serve": 6, "llm": 6, "compare": 6, "inspect": 6, "debug": 6, "cli": 6,
    "__main__": 6,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    return 0 if len(parts) == 1 else LAYERS[parts[1]]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "trtc" or n.startswith("trtc.")}


def test_every_module_has_a_layer():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert top <= set(LAYERS), f"add {sorted(top - set(LAYERS))} to LAYERS"


def test_no_stage_imports_a_later_stage():
    backwards = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("trtc", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        for imported in _imports(path):
            if _layer(imported) > _layer(module):
                backwards.append(f"{module} imports {imported}")
    assert not backwards, "\n".join(backwards)
