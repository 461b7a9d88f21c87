"""Every command block of README.md and of the docs/*.md pages runs verbatim (the conventions
are in the README's "About the examples"):

- a fence labelled ``bash``/``sh``/``shell``/``console`` is an example: it runs as written in
  ``bash -euo pipefail``, in page order, in one scratch folder per page that mirrors the
  repository root (symlinks), so a later block sees what an earlier one of the same page made and
  nothing lands in the checkout. ``macpo`` is this venv's console script, a real subprocess;
- placeholders are environment variables: ``$OUT`` is a finished run's output folder (a copy
  of the CI run, conftest's ``ci_run`` of ``eval/configs/ci.yaml``, one per page), ``$HH_FILE``
  the HH-RLHF file (conftest's ``shared_hh``; blocks using it skip when it is absent);
- a block that runs ``macpo push`` talks to a loopback Hub (``tests/hub_server.py``) through
  ``HF_ENDPOINT``, with a token in ``HF_TOKEN``, as ``hf auth login`` would provide;
- ``# -> TEXT`` at the end of a line: the block's stdout must contain TEXT;
- ``<!-- readme-test: skip (reason) -->`` just before a fence skips that block with the
  reason; ``<!-- readme-test: slow (reason) -->`` runs it only with ``-m slow``;
- an unlabelled fence is a synopsis: each ``macpo CMD …`` line must name a real command, and
  every ``--flag`` and ``a|b|c`` choice it shows must appear in ``macpo CMD --help``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hub_server import FakeHub

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The pages whose blocks run: the README, then every docs page (each in its own scratch folder).
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # the venv whose python runs the tests
SHELL_LANGS = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>skip|slow)\s*(?:\((?P<reason>.*?)\))?\s*-->")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^\n]*$")
EXPECT = re.compile(r"#\s*->\s*(?P<text>.+?)\s*$")
PLACEHOLDER = re.compile(r"\$\{?(?P<name>OUT|HH_FILE)\b")
BLOCK_TIMEOUT = 900


@dataclass
class Block:
    page: str  # the page's path from the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    section: str
    marker: tuple[str, str] | None = None  # (skip|slow, reason)
    placeholders: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-") or "top"
        return f"{self.page}:L{self.line}-{slug}"

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line} ({self.section})"


def parse_readme(text: str, page: str = "README.md") -> list[Block]:
    """Fenced blocks in order, each with its section heading and the marker right before it."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section, pending, i = "", None, 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            fence, start, body = m.group("fence"), i, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"{page}:{start + 1}: code fence is never closed")
            code = "\n".join(body) + "\n"
            blocks.append(Block(page, start + 1, m.group("lang").lower(), code, section, pending,
                                {p.group("name") for p in PLACEHOLDER.finditer(code)}))
            pending = None
        elif line.startswith("#"):
            section, pending = line.lstrip("#").strip(), None
        elif mm := MARKER.fullmatch(line.strip()):
            pending = (mm.group("kind"), (mm.group("reason") or "").strip())
            if not pending[1]:
                raise AssertionError(f"{page}:{i + 1}: a readme-test marker needs a reason in parentheses")
        elif line.strip():
            pending = None  # a marker applies only to the fence right after it (blank lines allowed)
        i += 1
    return blocks


def _rel(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


BLOCKS = [b for page in PAGES for b in parse_readme(page.read_text(encoding="utf-8"), _rel(page))]
EXAMPLES = [b for b in BLOCKS if b.lang in SHELL_LANGS]
SYNOPSES = [b for b in BLOCKS if b.lang in ("", "text") and re.search(r"^macpo \w", b.text, re.M)]


def _param(block: Block):
    marks = []
    if block.marker and block.marker[0] == "skip":
        marks.append(pytest.mark.skip(reason=f"{block.page}:{block.line}: {block.marker[1]}"))
    elif block.marker and block.marker[0] == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks)


class Session:
    """Runs one page's example blocks in page order in one scratch folder, each at most once."""

    def __init__(self, request, root: Path, page: str, hub):
        self.request, self.root, self.page, self.hub = request, root, page, hub
        self.work = root / "work"
        self.work.mkdir()
        # The README's commands run from the repository root; mirror it so they find repo files
        # (eval/configs/…) while everything they write stays out of the shared checkout.
        for entry in REPO.iterdir():
            if entry.name not in {".git", ".venv", "demo-out"} and not entry.name.startswith(".venv"):
                (self.work / entry.name).symlink_to(entry)
        self.env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
        self.results: dict[int, subprocess.CompletedProcess] = {}
        self._out: Path | None = None

    def placeholder(self, name: str) -> str:
        if name == "HH_FILE":
            return str(self.request.getfixturevalue("shared_hh"))  # skips when the data is absent
        if self._out is None:
            # A copy, so that examples may change their run without touching the shared one.
            shared, _ = self.request.getfixturevalue("ci_run")
            self._out = self.root / "ci-out"
            shutil.copytree(shared, self._out, symlinks=True)
        return str(self._out)

    def run(self, block: Block) -> subprocess.CompletedProcess:
        # Earlier runnable blocks first: a block may use what an earlier one made (`S`, …).
        for earlier in (b for b in EXAMPLES if b.page == self.page):
            if earlier.line >= block.line:
                break
            if earlier.line not in self.results and not earlier.marker:
                self._run(earlier)
        return self.results.get(block.line) or self._run(block)

    def _run(self, block: Block) -> subprocess.CompletedProcess:
        env = dict(self.env, **{name: self.placeholder(name) for name in sorted(block.placeholders)})
        if re.search(r"^\s*macpo push\b", block.text, re.M):
            env.pop("HF_HUB_OFFLINE")
            env.update(HF_ENDPOINT=self.hub().url, HF_HUB_DISABLE_XET="1", HF_TOKEN=HUB_TOKEN)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=self.work, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        self.results[block.line] = proc
        return proc


HUB_TOKEN = "hf_readme_test"


@pytest.fixture(scope="module")
def sessions(request, tmp_path_factory):
    """One Session per page, made when the page's first block runs; one loopback Hub for all."""
    assert (BIN / "macpo").is_file(), f"no macpo console script next to {sys.executable}"
    made: dict[str, Session] = {}
    hubs: list[FakeHub] = []

    def hub() -> FakeHub:
        if not hubs:
            hubs.append(FakeHub(tmp_path_factory.mktemp("hub"), token=HUB_TOKEN).start())
        return hubs[0]

    def get(page: str) -> Session:
        if page not in made:
            made[page] = Session(request, tmp_path_factory.mktemp(re.sub(r"\W+", "-", page)), page, hub)
        return made[page]

    yield get
    for h in hubs:
        h.stop()


def test_every_page_is_read_and_every_marker_sits_on_a_block():
    assert [b for b in EXAMPLES if b.page == "README.md"], "README.md has no ```bash examples"
    assert {"README.md", "docs/store.md"} <= {_rel(p) for p in PAGES}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        tagged = [line.strip() for line in text.splitlines() if re.match(r"\s*<!--\s*readme-test", line)]
        markers = [line for line in tagged if MARKER.fullmatch(line)]
        assert markers == tagged, f"{_rel(page)}: malformed readme-test markers: {sorted(set(tagged) - set(markers))}"
        assert len(markers) == sum(b.marker is not None for b in BLOCKS if b.page == _rel(page)), \
            f"{_rel(page)}: a <!-- readme-test: … --> marker is not directly followed by a code fence"


@pytest.mark.parametrize("block", [_param(b) for b in EXAMPLES])
def test_example_runs_verbatim(block: Block, sessions):
    proc = sessions(block.page).run(block)
    where = block.where
    assert proc.returncode == 0, f"{where} failed with exit code {proc.returncode}:\n{block.text}\n" \
                                 f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}"
    for line in block.text.splitlines():
        if m := EXPECT.search(line):
            assert m.group("text") in proc.stdout, f"{where}: `{line.strip()}` expected {m.group('text')!r} in:\n{proc.stdout[-2000:]}"


def _help(command: str) -> str:
    proc = subprocess.run([str(BIN / "macpo"), command, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"`macpo {command} --help` failed: {proc.stderr[-500:]}"
    return proc.stdout


@pytest.mark.parametrize("block", [_param(b) for b in SYNOPSES])
def test_synopsis_matches_help(block: Block):
    top = subprocess.run([str(BIN / "macpo"), "--help"], capture_output=True, text=True, timeout=120).stdout
    for line in block.text.splitlines():
        m = re.match(r"macpo (?P<cmd>[a-z][\w-]*)(?P<rest>.*)", line.strip())
        if not m:
            continue
        cmd, usage = m.group("cmd"), m.group("rest").split("#", 1)[0]
        assert re.search(rf"^\s+{cmd}\s", top, re.M), f"{block.where}: synopsis names `macpo {cmd}`, which `macpo --help` does not list"
        text = _help(cmd)
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", usage):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{block.where}: synopsis `{line.strip()}`: {flag} is not in `macpo {cmd} --help`"
        for choices in re.findall(r"(?<![\w./-])([a-z][\w-]*(?:\|[a-z][\w-]*)+)", usage):
            for choice in choices.split("|"):
                assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", text), \
                    f"{block.where}: synopsis `{line.strip()}`: choice {choice!r} is not in `macpo {cmd} --help`"
