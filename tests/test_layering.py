"""The package's layers: a module imports only from its own part or from the layers below it.

Layers, from the bottom (docs/architecture.md describes what each owns):
  base (errors, fileio, config, timing, processes) < geometry < io < data < quality < model
  < preprocess, synth, train < eval < view < demo, cli, api
Parts of one layer do not import each other (training never imports preprocessing).
"""

from __future__ import annotations

import ast
from pathlib import Path

import npva

PACKAGE = Path(npva.__file__).parent
LAYERS = [
    {"base": ("errors", "fileio", "config", "timing", "processes", "__init__")},
    {"geometry": ("geometry",)},
    {"io": ("io",)},
    {"data": ("data",)},
    {"quality": ("quality",)},
    {"model": ("model",)},
    {"preprocess": ("preprocess",), "synth": ("synth",), "train": ("train",)},
    {"eval": ("eval",)},
    {"view": ("view",)},
    {"top": ("demo", "cli", "api", "__main__")},
]


def part_of(top_level: str) -> tuple[int, str]:
    """(layer, part) of a top-level module or subpackage name of npva."""
    for layer, parts in enumerate(LAYERS):
        for part, names in parts.items():
            if top_level in names:
                return layer, part
    raise AssertionError(f"npva.{top_level} is in no layer: add it to LAYERS and docs/architecture.md")


def npva_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level name) of every npva module `path` imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "npva":
                names = [f"npva.{alias.name}" for alias in node.names]
        found += [(node.lineno, name.split(".")[1]) for name in names if name.startswith("npva.")]
    return found


def test_no_module_imports_from_a_layer_above_or_beside_it():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        layer, part = part_of(relative.parts[0].removesuffix(".py"))
        for line, name in npva_imports(path):
            if name == "__version__":
                continue
            other_layer, other_part = part_of(name)
            if other_part != part and other_layer >= layer:
                violations.append(f"npva/{relative}:{line} ({part}) imports npva.{name} ({other_part})")
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("import torch\n\ndef f():\n    from npva.train.engine import train\n")
    assert npva_imports(module) == [(4, "train")]
    assert part_of("train")[0] > part_of("model")[0]
