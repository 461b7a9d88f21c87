"""Documentation lives in the repository: no file points at a path that is not in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Design-note citations of the kind the code used to make: a "research" folder of markdown notes.
CITATION = re.compile(r"(?:\.\./)?(?:shared/)?research/[\w.-]+\.md")
DOC_LINK = re.compile(r"\bdocs/[\w./-]+\.md")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    files = out.stdout.split() if out.returncode == 0 else []
    return [REPO / f for f in files if f.endswith((".py", ".md", ".yaml", ".j2", ".toml", ".sql", ".txt")) or f == "Makefile"]


def test_no_file_cites_design_notes_outside_the_repository():
    offenders = []
    for path in _tracked():
        text = path.read_text(errors="replace")
        for m in CITATION.finditer(text):
            offenders.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not offenders, "citations of files outside the repository:\n" + "\n".join(offenders)


def test_every_docs_link_exists():
    missing = []
    for path in _tracked():
        for m in DOC_LINK.finditer(path.read_text(errors="replace")):
            if not (REPO / m.group(0)).is_file():
                missing.append(f"{path.relative_to(REPO)}: {m.group(0)}")
    assert not missing, "links to docs that do not exist:\n" + "\n".join(missing)
