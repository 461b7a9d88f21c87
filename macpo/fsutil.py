"""Durability helpers shared by the store and its facts (kept apart to avoid an import cycle):
fsync, read-only files, Parquet shards written and hashed as read back, the writer lock."""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WRITER_LOCK = ".writer.lock"
# A .tmp- folder without a writer lock (left by an older macpo) counts as stale after this long;
# a live writer creates its lock right after the folder, so only microseconds are unlocked.
UNLOCKED_TMP_GRACE_S = 600
LOCK_GRACE_S = 60


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


def write_parquet(table: pa.Table, path: Path) -> dict:
    """Write ``table`` to a new snappy Parquet file at ``path``, fsynced and made read-only;
    return its ``{"size", "sha256"}``, hashed from disk after the write: the bytes a reader sees."""
    # An Arrow file, not a Python one: the Parquet writer makes ~1,700 writes per 500k-row shard,
    # and through a Python file object each needs the GIL, which the row hashing on the main
    # thread holds for milliseconds at a time: the writer thread spent most of its time waiting.
    with pa.OSFile(str(path), "wb") as sink:
        pq.write_table(table, sink, compression="snappy")
        os.fsync(sink.fileno())
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        # Mapped, the whole file is one sha256 call that runs without the GIL. Safe here, where no
        # one else can truncate the file under the map; `status --verify` reads files in blocks.
        with mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ) as view:
            record = {"size": size, "sha256": hashlib.sha256(view).hexdigest()}
    make_read_only(path)
    return record


def writer_gone(tmp: Path) -> bool:
    """True when no live writer holds ``tmp``'s lock (flock dies with its process)."""
    try:
        fd = os.open(tmp / WRITER_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        try:
            return time.time() - tmp.stat().st_mtime > UNLOCKED_TMP_GRACE_S
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A writer creates its lock file, then locks it: in between, the lock is free. A lock file
        # that young belongs to a live writer, never to a killed one.
        return time.time() - os.fstat(fd).st_mtime > LOCK_GRACE_S
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
