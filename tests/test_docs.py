"""Documentation lives in the repository: the prose names no file, section or module that is not in it.

The prose is: README.md, docs/*.md, benchmarks/README.md and the Markdown templates (``*.md.j2``),
whole (code blocks included); the comments of the YAML configs, the Makefile and pyproject.toml;
the docstrings, comments and literal argparse help texts of every tracked Python file.

What counts as a mention, and what it must name:

1. a word ending in ``.md`` (``science.md``, a page under ``docs/``, ``README.md``): a file, relative
   to the repository root or to the mentioning file's folder; ``README "Some heading"`` (any
   ``*.md``, or README, followed by a quoted name) must also be a heading of that file;
2. a Markdown link ``[…](target#part)`` that is no URL: ``target`` relative to the linking file's
   folder (as GitHub resolves it), and ``part`` a heading of the target (or of the linking file
   when there is no target);
3. a word starting with a top-level folder of the repository (``builder/``, ``eval/``, ``macpo/``,
   …, read from ``git ls-files``): a file or folder (``*`` globs must match something);
4. an import name ``macpo.a.b``: a module (through pyproject's package-dir) or a name defined at
   the top of the longest module prefix;
5. nothing outside the repository: no ``research/*.md``, no "research notes", no path under the
   workspace (``/work/``).

This file is not scanned: it quotes the patterns it hunts.

Outputs and user paths are not repository files; the rule that exempts them is narrow:

- URLs (``scheme://…``) are skipped whole;
- a path rooted at a placeholder for a user's or a run's folder (``ROOTS``: ``OUT/``, ``$OUT``,
  ``DIR/``, ``STORE/``, ``demo-out/``, ``~/``, ``/tmp/``, ``<…>/``, …) is not checked;
- a ``.md`` file name that macpo itself writes into an output folder (``OUTPUT_MD``: the run's
  ``report.md``, the study's ``study.md``, the demo's ``summary.md``) is not checked, alone or in a
  path;
- inside a fenced code block, a path the block itself creates (the word after ``--out``,
  ``--store`` or ``>``, and anything under it) is not checked.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OUTPUT_MD = {"report.md", "study.md", "summary.md"}
# Placeholders for folders that are the user's or a run's, never the repository's.
ROOTS = ("OUT/", "$OUT", "${OUT", "DIR/", "STORE/", "STORE_OR_REPO", "VERSION/", "demo-out/", "~/", "/tmp/",
         "runs/", "step-cache/", "models/", "store/", "<")
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
MD = re.compile(r"(?<![\w./$~{<-])(?P<path>[\w$.~<>{}/-]*[\w>}]\.md)(?![\w-]|\.\w)(?:#(?P<anchor>[\w-]+))?")
QUOTED_SECTION = re.compile(r"(?<![\w./-])(?P<file>README|[\w./-]+\.md)(?:'s)? \"(?P<heading>[^\"\n]+)\"")
IMPORT = re.compile(r"(?<![\w.$/-])macpo(?:\.[A-Za-z_]\w*)+(?![\w-])")
OUTSIDE = re.compile(r"(?:\.\./)?(?:shared/)?research/[\w.-]+\.md|\bresearch notes?\b|(?<![\w.])/work/[\w./-]*", re.I)
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
LINK = re.compile(r"\]\((?P<target>[^)\s]*?)(?:#(?P<anchor>[^)\s]+))?\)")
CREATES = re.compile(r"(?:--out|--store)[ =]\"?(?P<p>[\w./-]+)|>\s*\"?(?P<q>[\w./-]+)")


@dataclass(frozen=True)
class Prose:
    path: Path  # the file the text comes from
    line: int
    text: str
    in_code: bool = False  # inside a fenced Markdown code block
    created: tuple[str, ...] = ()  # paths the enclosing code block creates

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (REPO / f).exists()]


@lru_cache(maxsize=1)
def _top_folders() -> tuple[str, ...]:
    return tuple(sorted({f.split("/", 1)[0] for f in _tracked() if "/" in f and not f.startswith(".")}))


def _markdown(path: Path) -> list[Prose]:
    out, fence, created = [], None, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m and (fence is None or m.group(1)[0] * len(fence) in line):
            fence, created = (m.group(1), []) if fence is None else (None, [])
            continue
        if fence is not None:
            created += [c.group("p") or c.group("q") for c in CREATES.finditer(line)]
        out.append(Prose(path, i, line, fence is not None, tuple(created)))
    return out


def _comments(path: Path) -> list[Prose]:
    """`#` comments of YAML, Makefile and TOML files (whole comment lines and trailing ones)."""
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.search(r"(?:^|\s)#(?P<c>.*)$", line)
        if m:
            out.append(Prose(path, i, m.group("c")))
    return out


def _python(path: Path) -> list[Prose]:
    source = path.read_text(encoding="utf-8")
    out = [Prose(path, tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        # argparse's help texts are documentation too (`macpo CMD --help`).
        if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog") \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            out += [Prose(path, node.value.lineno, text) for text in node.value.value.splitlines()]
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out += [Prose(path, first.lineno + k, text) for k, text in enumerate(first.value.value.splitlines())]
    return out


def prose() -> list[Prose]:
    items: list[Prose] = []
    for f in _tracked():
        path = REPO / f
        if path == Path(__file__).resolve():
            continue
        if f == "README.md" or f == "benchmarks/README.md" or re.fullmatch(r"docs/[^/]+\.md", f) or f.endswith(".md.j2"):
            items += _markdown(path)
        elif f.endswith((".yaml", ".yml", ".toml")) or f == "Makefile":
            items += _comments(path)
        elif f.endswith(".py"):
            items += _python(path)
    return items


def _exempt(word: str, item: Prose) -> bool:
    word = word.strip("`\"'()[],;:")
    if word.startswith(ROOTS) or Path(word).name in OUTPUT_MD:
        return True
    return item.in_code and any(word == c or word.startswith(c.rstrip("/") + "/") for c in item.created)


def _exists(word: str, item: Prose) -> bool:
    word = word.rstrip(".,:;")
    for base in (REPO, item.path.parent):
        target = base / word
        if "*" in word:
            if any(base.glob(word)):
                return True
        elif target.exists() and (REPO in target.resolve().parents or target.resolve() == REPO):
            return True
    return False


def dangling_files(items: list[Prose]) -> list[str]:
    """Rules 1 and 2: `*.md` words and repository paths that name nothing."""
    tops = "|".join(map(re.escape, _top_folders()))
    repo_path = re.compile(rf"(?<![\w./$~{{<-])(?P<path>(?:{tops})/[\w./*-]*)")
    missing = []
    for item in items:
        text = URL.sub(" ", item.text)
        words = [m.group("path") for m in MD.finditer(text)] + [m.group("path") for m in repo_path.finditer(text)]
        for word in words:
            if not _exempt(word, item) and not _exists(word, item):
                missing.append(f"{item.where()}: {word}")
    return sorted(set(missing))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(md: Path) -> list[str]:
    heads, fence = [], False
    for line in md.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            heads.append(m.group(1))
    return heads


def dangling_links(items: list[Prose]) -> list[str]:
    """Rule 2, for Markdown links outside code blocks."""
    missing = []
    for item in items:
        if item.in_code or item.path.suffix != ".md":
            continue
        for m in LINK.finditer(item.text):
            target, anchor = m.group("target"), m.group("anchor")
            if URL.match(target) or target.startswith("mailto:"):
                continue
            path = (item.path.parent / target) if target else item.path
            if not path.exists():
                missing.append(f"{item.where()}: ({m.group(0)[2:-1]}) (no such file from {item.path.parent.relative_to(REPO).as_posix() or '.'}/)")
            elif anchor and path.suffix == ".md" and anchor not in {_slug(h) for h in _headings(path)}:
                missing.append(f"{item.where()}: ({m.group(0)[2:-1]}) (no such heading)")
    return sorted(set(missing))


def dangling_sections(items: list[Prose]) -> list[str]:
    missing = []
    for item in items:
        text = URL.sub(" ", item.text)
        for m in MD.finditer(text):
            if m.group("anchor") and not _exempt(m.group("path"), item) and _exists(m.group("path"), item):
                target = next(b / m.group("path") for b in (REPO, item.path.parent) if (b / m.group("path")).is_file())
                if m.group("anchor") not in {_slug(h) for h in _headings(target)}:
                    missing.append(f"{item.where()}: {m.group(0)} (no such heading)")
        for m in QUOTED_SECTION.finditer(text):
            name = "README.md" if m.group("file") == "README" else m.group("file")
            target = next((b / name for b in (REPO, item.path.parent) if (b / name).is_file()), None)
            if target is None:
                continue  # the file itself is rule 1's
            wanted = m.group("heading").strip().lower()
            if not any(h.lower() == wanted or _slug(h) == _slug(wanted) for h in _headings(target)):
                missing.append(f"{item.where()}: {m.group('file')} \"{m.group('heading')}\" (no such heading)")
    return sorted(set(missing))


@lru_cache(maxsize=1)
def _package_dirs() -> dict[str, Path]:
    """Import prefix -> folder, from pyproject's [tool.setuptools.package-dir]."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    return {m.group(1): REPO / m.group(2) for m in re.finditer(r'^"([\w.]+)"\s*=\s*"([\w./-]+)"', section, re.M)}


@lru_cache(maxsize=None)
def _top_names(module: Path) -> frozenset[str]:
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    dirs = _package_dirs()
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        prefix = max((p for p in dirs if name == p or name.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            continue
        base = dirs[prefix].joinpath(*name[len(prefix):].lstrip(".").split(".")) if name != prefix else dirs[prefix]
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[i:]
            return not rest or rest[0] in _top_names(module) or (base / rest[0]).is_dir()
    return False


def dangling_imports(items: list[Prose]) -> list[str]:
    return sorted({f"{item.where()}: {m.group(0)}" for item in items
                   for m in IMPORT.finditer(URL.sub(" ", item.text)) if not _resolves(m.group(0))})


def outside_pointers(items: list[Prose]) -> list[str]:
    return sorted({f"{item.where()}: {m.group(0)}" for item in items for m in OUTSIDE.finditer(URL.sub(" ", item.text))})


PROSE = prose()


def test_the_scanner_reads_every_kind_of_prose():
    kinds = {p.path.relative_to(REPO).as_posix() for p in PROSE}
    for expected in ("README.md", "benchmarks/README.md", "eval/configs/demo.yaml", "Makefile", "tests/conftest.py"):
        assert expected in kinds, f"{expected} is not scanned"
    assert any(k.startswith("docs/") for k in kinds) and any(k.endswith(".md.j2") for k in kinds)


def test_the_rules_catch_what_the_old_regex_missed_and_spare_outputs():
    here = REPO / "docs" / "example.md"
    # Names of pages that do not exist (the kinds the old regex missed), built here so that this
    # file does not itself mention a missing document.
    gone = [name + ".md" for name in ("perf-baselines", "sandbox", "README.head")]
    bad = [Prose(here, 1, f"see {gone[0]} and {gone[1]}"), Prose(here, 2, f"falls back to {gone[2]}"),
           Prose(here, 3, "(the research notes have the measurements)"), Prose(here, 4, "`builder/nosuch.py` does it"),
           Prose(here, 5, "[x](science.md#no-such-part)"), Prose(here, 6, 'README "No such section" says'),
           Prose(here, 7, "`macpo.nosuch` or `macpo.store.NoSuchThing`"), Prose(here, 8, "from /work/shared/x")]
    assert sorted(m.split(": ", 1)[1] for m in dangling_files(bad)) == sorted([*gone, "builder/nosuch.py"])
    assert len(dangling_sections(bad)) == 2
    links = [Prose(here, 1, "[a](docs/science.md) [b](science.md#no-such-part) [c](#nowhere)"),
             Prose(here, 2, "[d](science.md#the-premise-gates) [e](../README.md) [f](https://x.org/y.md#z)")]
    assert [m.split(": ", 1)[1].split(" (no such")[0] for m in dangling_links(links)] == \
        ["(#nowhere)", "(docs/science.md)", "(science.md#no-such-part)"]
    assert [m.split(": ", 1)[1] for m in dangling_imports(bad)] == ["macpo.nosuch", "macpo.store.NoSuchThing"]
    assert len(outside_pointers(bad)) == 2
    good = [Prose(here, 1, "writes `OUT/report.md`, `demo-out/summary.md` and study.md; https://x.org/a/b.md"),
            Prose(here, 2, "[science](science.md), docs/science.md, ../README.md, `eval/configs/`, `macpo.store.Store`"),
            Prose(here, 3, "macpo train --out my-model/notes.md", in_code=True, created=("my-model",)),
            Prose(here, 4, "`$OUT/store/x.md`, ~/.cache/macpo, `eval/configs/*.yaml`")]
    assert not dangling_files(good) and not dangling_sections(good) and not dangling_imports(good)
    assert not outside_pointers(good)


def test_every_mentioned_file_exists():
    missing = dangling_files(PROSE)
    assert not missing, "mentions of files that are not in the repository:\n" + "\n".join(missing)


def test_every_markdown_link_resolves_from_its_page():
    missing = dangling_links(PROSE)
    assert not missing, "Markdown links that lead nowhere:\n" + "\n".join(missing)


def test_every_linked_or_quoted_section_exists():
    missing = dangling_sections(PROSE)
    assert not missing, "links or quotes of sections that do not exist:\n" + "\n".join(missing)


def test_every_import_name_in_the_prose_exists():
    missing = dangling_imports(PROSE)
    assert not missing, "import names that are no module or top-level name:\n" + "\n".join(missing)


def test_nothing_points_outside_the_repository():
    found = outside_pointers(PROSE)
    assert not found, "pointers at files outside the repository:\n" + "\n".join(found)
