"""How much of the machine a DuckDB query may use: memory (the process's limit, and DuckDB's
share of it), threads, spill space on disk, and the ``--memory-limit`` / ``--threads`` /
``--max-spill`` flags of sql and audit."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from macpo.errors import UserError

# Without a limit DuckDB takes 80% of RAM: a cross join that prints 1000 rows peaked at 8.5 GB.
DEFAULT_MEMORY_SHARE = 0.25
# DuckDB's memory_limit governs its buffer manager only; its threads, allocator slack and
# small allocations come on top (0.07-0.29 GB measured on cross joins at 0.3-4 GB limits; 0.42 GB
# once, with the test suite's two workers beside it: a 700 MB limit peaked at 820 MB with 384 MiB
# of headroom), so DuckDB gets the process limit minus what the process already holds minus this.
HEADROOM_BYTES = 512 * 2**20
# Beyond its memory limit DuckDB spills to disk, by default up to 90% of the free space: one
# query over a shared machine's store could fill its disk. A quarter of what is free instead.
DEFAULT_SPILL_SHARE = 0.25
HEADROOM_SHARE = 0.1
MIN_DUCKDB_BYTES = 32 * 2**20
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def physical_memory() -> int:
    """Bytes of RAM this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


def default_memory_limit() -> int:
    return int(physical_memory() * DEFAULT_MEMORY_SHARE)


def free_temp_space() -> int:
    """Bytes free where DuckDB's spill folder goes (the system temp folder)."""
    try:
        return shutil.disk_usage(tempfile.gettempdir()).free
    except OSError:
        return 0


def default_max_spill() -> int:
    return int(free_temp_space() * DEFAULT_SPILL_SHARE)


def parse_size(text: str, flag: str = "--memory-limit", whole: int | None = None, of: str = "RAM") -> int:
    """``4GB``, ``512MiB``, ``25%`` (of ``whole``: RAM unless given) or plain bytes -> bytes;
    anything else is one line."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%|[kmgt]i?b|b)?\s*", text, re.IGNORECASE)
    if not m:
        raise UserError(f"{flag} {text!r}: give a size like 4GB, 512MiB or 25% (of {of})")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    value = (physical_memory() if whole is None else whole) * number / 100 if unit == "%" else number * _UNITS[unit]
    if not math.isfinite(value) or value <= 0 or (unit == "%" and number > 100):
        raise UserError(f"{flag} {text!r}: must be more than 0 and at most 100%")
    return int(value)


def _resident_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def duckdb_memory_limit(process_limit: int) -> int:
    """DuckDB's ``memory_limit`` for a process that should stay under ``process_limit`` bytes."""
    held = _resident_bytes()
    duck = process_limit - held - max(HEADROOM_BYTES, int(process_limit * HEADROOM_SHARE))
    if duck < MIN_DUCKDB_BYTES:
        least = max(held + HEADROOM_BYTES + MIN_DUCKDB_BYTES, (held + MIN_DUCKDB_BYTES) / (1 - HEADROOM_SHARE))
        raise UserError(f"--memory-limit {process_limit / 1e6:.0f}MB leaves DuckDB no room: this process "
                        f"already holds {held / 1e6:.0f}MB; give at least {least / 1e6:.0f}MB")
    return duck


def add_resource_flags(p) -> None:
    """``--memory-limit`` and ``--threads``: the bounds of a command's DuckDB (sql, audit)."""
    p.add_argument("--memory-limit", metavar="SIZE", default=None,
                   help=f"the most memory this command may use, e.g. 4GB, 512MiB or 25%% of RAM (default "
                        f"{DEFAULT_MEMORY_SHARE * 100:.0f}%% of RAM, here {default_memory_limit() / 1e9:.1f}GB); DuckDB spills "
                        "to a private temp folder beyond it, or fails the query with one line")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"DuckDB worker threads (default: the usable CPUs, here {usable_cpus()})")
    p.add_argument("--max-spill", metavar="SIZE", default=None,
                   help=f"the most disk DuckDB may spill to beyond --memory-limit, e.g. 20GB or 10%% of the free space "
                        f"(default {DEFAULT_SPILL_SHARE * 100:.0f}%% of the free space in the temp folder, here "
                        f"{default_max_spill() / 1e9:.1f}GB); a query that needs more fails with one line")


def resource_args(args) -> dict:
    """``memory_limit``, ``threads`` and ``max_spill`` for :func:`connect` from the parsed flags, checked."""
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1; got {args.threads}")
    limit = parse_size(args.memory_limit) if args.memory_limit is not None else None
    spill = (parse_size(args.max_spill, "--max-spill", free_temp_space(), "the free space")
             if args.max_spill is not None else None)
    return {"memory_limit": limit, "threads": args.threads, "max_spill": spill}
