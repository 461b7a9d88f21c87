"""The package's own imports sit at the top of each module (docs/architecture.md): an import of a
macpo module inside a function hides an edge of the floor plan from the reader. import-linter
(`make imports`) checks the direction of every edge, lazy ones included; this checks the place.

The one reason to import a macpo module inside a function is its cost: a module that loads a
heavy library at its top (trl, torch) kept out of a light command's start-up. Such an import
says so in a comment on its line or directly above it (or above the group it opens)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("macpo", "builder", "trainer", "eval", "data_cards")


def _project_modules(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [f"{'.' * node.level}{node.module or ''}"] if node.level or (node.module or "").split(".")[0] == "macpo" else []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "macpo"]
    return []


def _says_why(comment: str) -> bool:
    """A comment with words in it; a bare ``# noqa: F401`` is not a reason."""
    return bool(re.sub(r"noqa(:\s*[A-Z0-9, ]+)?", "", comment).strip(" #-()"))


def _has_reason(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or on the line above it or above its group of imports."""
    line = lines[lineno - 1]
    if "#" in line and _says_why(line.split("#", 1)[1]):
        return True
    i = lineno - 2
    while i >= 0 and lines[i].strip().startswith(("import ", "from ")):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#") and _says_why(lines[i].strip())


def unexplained_lazy_imports(text: str) -> list[tuple[int, str]]:
    """(line, module) of each macpo import inside a function without a reason comment."""
    lines, found = text.splitlines(), []
    for func in ast.walk(ast.parse(text)):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                found += [(node.lineno, m) for m in _project_modules(node) if not _has_reason(lines, node.lineno)]
    return sorted(set(found))


def test_no_project_module_is_imported_inside_a_function_without_a_reason():
    offenders = [f"{path.relative_to(REPO)}:{line}: {module}"
                 for folder in PACKAGE_FOLDERS for path in sorted((REPO / folder).rglob("*.py"))
                 for line, module in unexplained_lazy_imports(path.read_text())]
    assert not offenders, "macpo modules imported inside functions (move them to the top):\n" + "\n".join(offenders)


def test_the_check_tells_an_explained_lazy_import_from_a_hidden_one():
    text = ("def f():\n    from macpo import store\n\n\n"
            "def g():\n    # lazy: objectives imports trl at its top\n    import json\n    from macpo.trainer import objectives\n\n\n"
            "def h():\n    import macpo.sql  # lazy: duckdb\n\n\n"
            "def k():\n    import macpo.hub  # noqa: F401\n")
    assert unexplained_lazy_imports(text) == [(2, "macpo"), (16, "macpo.hub")]
