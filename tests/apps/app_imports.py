"""What an example app's simulator runs of this repository: its imports followed through every
`apps…` module it reaches (by reading their source, not importing them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"contracts", "stream", "features", "trainer", "evaluation", "serving", "infra", "monitoring"}


def _module_file(name: str) -> Path | None:
    """The file of an `apps…` module in this repository (None: not one of ours)."""
    parts = name.split(".")
    if parts[0] != "apps":
        return None
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _imported(path: Path) -> set[str]:
    """Every module `path` imports (for `from a.b import c`: a.b, and a.b.c where that is a module),
    plus the packages above each, which Python runs first."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the check follows absolute ones"
            names.add(node.module)
            names |= {
                f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")
            }
    parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
    return names | parents


def reached(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(the repository modules `path`, run as module `name`, reaches — itself included — and the
    top-level names of everything they import)."""
    seen: dict[str, Path] = {name: path}
    todo = [path]
    top_levels: set[str] = set()
    while todo:
        for imported in _imported(todo.pop()):
            top_levels.add(imported.split(".")[0])
            found = _module_file(imported)
            if found is not None and imported not in seen:
                seen[imported] = found
                todo.append(found)
    return set(seen), top_levels
