"""Every command block of README.md runs verbatim (the conventions are in the README's
"About the examples"):

- a fence labelled ``bash``/``sh``/``shell``/``console`` is an example: it runs as written in
  ``bash -euo pipefail``, in README order, in one scratch folder that mirrors the repository
  root (symlinks), so a later block sees what an earlier one made and nothing lands in the
  checkout. ``macpo`` is this venv's console script, a real subprocess;
- placeholders are environment variables: ``$OUT`` is a finished run's output folder (a copy
  of the CI run, conftest's ``ci_run`` of ``eval/configs/ci.yaml``), ``$HH_FILE`` the HH-RLHF
  file (conftest's ``shared_hh``; blocks using it skip when it is absent);
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

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the venv whose python runs the tests
SHELL_LANGS = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<kind>skip|slow)\s*(?:\((?P<reason>.*?)\))?\s*-->")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^\n]*$")
EXPECT = re.compile(r"#\s*->\s*(?P<text>.+?)\s*$")
PLACEHOLDER = re.compile(r"\$\{?(?P<name>OUT|HH_FILE)\b")
BLOCK_TIMEOUT = 900


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    section: str
    marker: tuple[str, str] | None = None  # (skip|slow, reason)
    placeholders: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-") or "top"
        return f"L{self.line}-{slug}"


def parse_readme(text: str) -> list[Block]:
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
                raise AssertionError(f"README.md:{start + 1}: code fence is never closed")
            code = "\n".join(body) + "\n"
            blocks.append(Block(start + 1, m.group("lang").lower(), code, section, pending,
                                {p.group("name") for p in PLACEHOLDER.finditer(code)}))
            pending = None
        elif line.startswith("#"):
            section, pending = line.lstrip("#").strip(), None
        elif mm := MARKER.fullmatch(line.strip()):
            pending = (mm.group("kind"), (mm.group("reason") or "").strip())
            if not pending[1]:
                raise AssertionError(f"README.md:{i + 1}: a readme-test marker needs a reason in parentheses")
        elif line.strip():
            pending = None  # a marker applies only to the fence right after it (blank lines allowed)
        i += 1
    return blocks


BLOCKS = parse_readme(README.read_text(encoding="utf-8"))
EXAMPLES = [b for b in BLOCKS if b.lang in SHELL_LANGS]
SYNOPSES = [b for b in BLOCKS if b.lang in ("", "text") and re.search(r"^macpo \w", b.text, re.M)]


def _param(block: Block):
    marks = []
    if block.marker and block.marker[0] == "skip":
        marks.append(pytest.mark.skip(reason=f"README.md:{block.line}: {block.marker[1]}"))
    elif block.marker and block.marker[0] == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks)


class Session:
    """Runs example blocks in README order in one scratch folder, each at most once."""

    def __init__(self, request, root: Path):
        self.request, self.root = request, root
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
        for earlier in EXAMPLES:
            if earlier.line >= block.line:
                break
            if earlier.line not in self.results and not earlier.marker:
                self._run(earlier)
        return self.results.get(block.line) or self._run(block)

    def _run(self, block: Block) -> subprocess.CompletedProcess:
        env = dict(self.env, **{name: self.placeholder(name) for name in sorted(block.placeholders)})
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.text], cwd=self.work, env=env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        self.results[block.line] = proc
        return proc


@pytest.fixture(scope="module")
def session(request, tmp_path_factory):
    assert (BIN / "macpo").is_file(), f"no macpo console script next to {sys.executable}"
    return Session(request, tmp_path_factory.mktemp("readme"))


def test_readme_has_examples_and_every_marker_sits_on_a_block():
    assert EXAMPLES, "README.md has no ```bash examples"
    text = README.read_text(encoding="utf-8")
    tagged = [line.strip() for line in text.splitlines() if re.match(r"\s*<!--\s*readme-test", line)]
    markers = [line for line in tagged if MARKER.fullmatch(line)]
    assert markers == tagged, f"malformed readme-test markers: {sorted(set(tagged) - set(markers))}"
    assert len(markers) == sum(b.marker is not None for b in BLOCKS), \
        "a <!-- readme-test: … --> marker is not directly followed by a code fence"


@pytest.mark.parametrize("block", [_param(b) for b in EXAMPLES])
def test_example_runs_verbatim(block: Block, session: Session):
    proc = session.run(block)
    where = f"README.md:{block.line} ({block.section})"
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
        assert re.search(rf"^\s+{cmd}\s", top, re.M), f"README synopsis names `macpo {cmd}`, which `macpo --help` does not list"
        text = _help(cmd)
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", usage):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"README synopsis `{line.strip()}`: {flag} is not in `macpo {cmd} --help`"
        for choices in re.findall(r"(?<![\w./-])([a-z][\w-]*(?:\|[a-z][\w-]*)+)", usage):
            for choice in choices.split("|"):
                assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", text), \
                    f"README synopsis `{line.strip()}`: choice {choice!r} is not in `macpo {cmd} --help`"
