"""Small shared pieces of the command-line shell (kept apart from cli.py to avoid cycles)."""

from __future__ import annotations

import argparse
import sys

from macpo.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (argparse's own code for usage errors)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def make_parser(command: str, description: str) -> ArgumentParser:
    return ArgumentParser(
        prog=f"macpo {command}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse_kv(items: list[str] | None) -> dict[str, str]:
    """Parse repeated ``key=value`` overrides."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def run_script(prog: str, main) -> None:
    """``if __name__ == "__main__"`` for modules run with ``python -m``: ``main(argv)``'s code, or a
    one-line error and exit 2 for a UserError, as ``macpo <command>`` does."""
    watch_parent()
    try:
        raise SystemExit(main(sys.argv[1:]))
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        raise SystemExit(130) from None


# ---- a stage dies with the run that started it --------------------------------------------------
PARENT_ENV = "MACPO_STAGE_PARENT"


def watch_parent(interval: float = 0.2) -> None:
    """In a stage started by ``macpo run`` (which sets ``MACPO_STAGE_PARENT`` to its pid and makes
    the stage lead its own process group): when the run dies, even by kill -9, take the stage's
    whole group down (its own children too) instead of finishing as an orphan.

    A daemon thread polls the parent pid; on Linux, PR_SET_PDEATHSIG would kill only this process
    and leave its children. The variable is removed from the environment so the stage's own
    children (accelerate's workers) do not mistake their parent for a dead run.
    """
    import os
    import signal
    import threading

    expected = os.environ.pop(PARENT_ENV, "")
    if not expected.isdigit():
        return

    def gone() -> bool:
        return os.getppid() != int(expected)

    def die() -> None:
        try:
            if os.getpgid(0) == os.getpid():  # the group is ours alone: take our children with us
                os.killpg(0, signal.SIGKILL)
        finally:
            os._exit(137)

    if gone():  # the run died before this stage got here
        die()

    def watch() -> None:
        import time

        while not gone():
            time.sleep(interval)
        die()

    threading.Thread(target=watch, name="macpo-parent-watch", daemon=True).start()


# ---- where a command writes -----------------------------------------------------------------------
# A folder a command created holds this file naming the command: `--overwrite` (and a resumed run)
# replaces only folders holding its own marker, never foreign content.
OUTPUT_MARKER = ".macpo-output"


def check_out_path(out, what: str = "--out") -> None:
    """Refuse an output path that is a file, or sits below one (nothing could be written there)."""
    from pathlib import Path

    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{what} {p}: {parent} is a file, not a folder")
            break


def check_out_apart(out, reads: list[tuple[str, object]], what: str = "--out") -> None:
    """Refuse an output folder that equals, contains or sits inside a folder the command reads
    (``reads``: (label, path) pairs; None paths and Hub ids that are not local folders are skipped).
    Writing there would replace or mix into the very data being read."""
    from pathlib import Path

    mine = Path(out).resolve()
    for label, path in reads:
        try:
            if not path or not Path(path).exists():
                continue
        except OSError:  # a Hub id too long for a file name is no folder either
            continue
        theirs = Path(path).resolve()
        if mine == theirs:
            raise UserError(f"{what} {out} is {label} it reads; write somewhere else")
        if theirs.is_relative_to(mine):
            raise UserError(f"{what} {out} contains {label} it reads ({path}); write somewhere else")
        if mine.is_relative_to(theirs):
            raise UserError(f"{what} {out} is inside {label} it reads ({path}); write somewhere else")


def write_marker(folder, command: str) -> None:
    import json
    from pathlib import Path

    (Path(folder) / OUTPUT_MARKER).write_text(json.dumps({"written_by": f"macpo {command}"}) + "\n")


def marked_by(folder, commands: tuple[str, ...]) -> bool:
    """Whether ``folder`` carries the marker of one of ``commands`` (anything unreadable: no)."""
    import json
    from pathlib import Path

    try:
        data = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") in {f"macpo {c}" for c in commands}


def check_owned(folder, commands: tuple[str, ...], what: str = "--out", legacy: tuple[str, ...] = (),
                ignore: tuple[str, ...] = ()) -> None:
    """An existing non-empty ``folder`` must be one of ``commands``' own outputs (its marker, or
    for folders written before markers existed, every file named in ``legacy``). Names in
    ``ignore`` (a lock taken just before the marker is written) do not count as content."""
    from pathlib import Path

    p = Path(folder)
    if not p.is_dir() or not any(c.name not in ignore for c in p.iterdir()) or marked_by(p, commands):
        return
    if legacy and all((p / name).exists() for name in legacy):
        return
    raise UserError(f"{what} {p} holds files that macpo {commands[0]} did not write (no {OUTPUT_MARKER}); "
                    "refusing to write into it: choose a new or empty folder")
