"""Every third-party package the library imports is declared in pyproject.toml's dependencies."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

from tinymodels import REPO

def _imported_top_level_names() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "src" / "distillery").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"distillery"}


def _declared() -> set[str]:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = text.split("dependencies = [", 1)[1].split("\n]", 1)[0]
    return {m.group(1).lower().replace("_", "-") for m in re.finditer(r'^\s*"([A-Za-z0-9_.\-]+)', block, re.M)}


def test_every_imported_package_is_declared():
    dists = packages_distributions()
    declared = _declared()
    undeclared = {}
    for name in sorted(_imported_top_level_names()):
        provided_by = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
        if not provided_by & declared:
            undeclared[name] = sorted(provided_by)
    assert not undeclared, f"imported by src/distillery but not in pyproject.toml's dependencies: {undeclared}"
