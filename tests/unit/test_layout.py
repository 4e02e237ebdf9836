"""README's layout table names every module and package of the library, so it cannot drift from the tree."""

from __future__ import annotations

import re

from tinymodels import REPO


def test_readme_layout_names_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+)/?`", section))
    package = REPO / "src" / "distillery"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert modules - named == set(), f"README's layout table does not name {sorted(modules - named)}"
    assert {"jobs", "serve", "cluster", "tests", "bench"} <= named
