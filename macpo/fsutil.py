"""Durability helpers shared by the store and its facts (kept apart to avoid an import cycle)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so the names created in it survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


READ_ONLY = 0o444


def make_read_only(path: Path) -> None:
    """Committed files are 0444 (as git does with its objects): a stray writer, or a query that
    slipped past the SQL sandbox, cannot overwrite them in place. Folders stay writable, so
    ``rm -rf`` still deletes a store and writers still add new versions beside old ones."""
    os.chmod(path, READ_ONLY)
