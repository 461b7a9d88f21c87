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
    try:
        raise SystemExit(main(sys.argv[1:]))
    except UserError as exc:
        sys.stderr.write(f"{prog}: error: {exc}\n")
        raise SystemExit(2) from None
