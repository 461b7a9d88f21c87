"""``macpo sql``: read-only DuckDB over every dataset version of a store.

Views (one row per stored row, plus ``dataset``, ``version``, ``subset`` columns):
``pairs``, ``sft``, ``candidates``, ``prompts``, ``evals`` (one per table kind, with flat
``*_text`` columns beside the nested message lists), ``KIND_facts`` (the same rows with the
scalar columns and, instead of each message list ``M``, ``M_key`` (64-bit hash), ``M_bytes``
and ``M_blank``: see ``macpo/facts.py``), ``datasets`` (versions and hashes),
``subsets`` (row counts per subset) and ``rounds`` (the ``round-N`` versions).

Read-only is enforced by DuckDB itself, not by keyword matching:

- only SELECT statements pass ``extract_statements``, and EXPLAIN only over a SELECT
  (``EXPLAIN ANALYZE`` executes its inner statement);
- the connection may open exactly the data files of the views (``allowed_paths``) and its
  own private temp folder, nothing else (checked in ``duckdb_settings()`` after locking), with
  ``enable_external_access=false`` + ``lock_configuration=true``;
- the committed files themselves are read-only on disk (macpo/store.py).

Results stream in batches; ``--max-rows`` and ``--timeout`` bound a query at the terminal,
``--memory-limit`` (default a quarter of RAM) and ``--threads`` bound DuckDB, and Ctrl-C
stops a running query (exit 130). Data files are read by exact path: a folder named ``h?``
never reads ``hx``.

Output: ``--format table`` escapes control characters (ESC shows as ``\\x1b``, a newline as
``\\n``), so data cannot drive the terminal; ``csv`` and ``json`` carry values exactly.
``--format json`` is strict JSON: NaN and infinities become null, blobs base64, and duplicate
column names get DuckDB's suffixes (``SELECT 1 AS a, 2 AS a`` gives ``{"a": 1, "a_1": 2}``).
"""

from __future__ import annotations

import atexit
import base64
import csv
import datetime
import decimal
import json
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from macpo.cliutil import make_parser
from macpo.errors import UserError
from macpo.facts import fact_expressions, fact_files, fact_select_list, scalar_columns
from macpo.hub import snapshot
from macpo.schema import KINDS, MESSAGES

BATCH_ROWS = 1000
# Defaults for the terminal format: a person reading a table wants a screenful, not 10M rows,
# and a runaway join should end by itself. csv/json are for pipes: no limits unless asked.
TABLE_MAX_ROWS = 1000
TABLE_TIMEOUT_S = 600.0


@dataclass
class VersionSource:
    dataset: str
    version: str
    root: Path  # folder holding manifest.json
    manifest: dict
    # False when the stored facts failed verification and could not be rebuilt (an audit in a
    # read-only store): the *_facts views then compute them from the text.
    use_facts: bool = True


def store_sources(store, dataset: str | None = None, version: str | None = None) -> list[VersionSource]:
    """Every version to expose, each manifest validated and each file's size checked (cheap):
    a damaged version stops the query with one line naming it."""
    out = []
    for name in store.datasets():
        if dataset is not None and name != dataset:
            continue
        for v in store.versions(name):
            if version is not None and v != version:
                continue
            manifest = store.manifest(name, v)
            store.check_sizes(name, v, manifest)
            out.append(VersionSource(name, v, store.path(name, v), manifest))
    return out


def snapshot_sources(folder: Path, dataset: str) -> list[VersionSource]:
    """A published Hub snapshot: ``<version>/manifest.json`` + ``<version>/<subset>/*.parquet``,
    each manifest validated like a local one."""
    from macpo.store import size_problems, validate_manifest

    out = []
    for manifest_path in sorted(folder.glob("*/manifest.json")):
        where = f"{dataset}/{manifest_path.parent.name}"
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{where}: corrupt manifest ({str(exc).splitlines()[0][:200]})") from None
        validate_manifest(manifest, manifest_path.parent, where)
        problems = size_problems(manifest_path.parent, manifest)
        if problems:
            raise UserError(f"{where} is damaged: {'; '.join(problems)}")
        out.append(VersionSource(dataset, manifest_path.parent.name, manifest_path.parent, manifest))
    return out


def _q(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


_GLOB_CHARS = "*?["


def _duck_path(path: Path) -> tuple[str, str]:
    """``(file, pattern)`` of one file a view reads: its resolved path, and that path as a
    DuckDB glob matching exactly it. DuckDB globs every path it is given, so a folder named
    ``h?`` would also read ``hx``; each ``*``, ``?`` and ``[`` becomes a one-character class
    (``[?]``). The sandbox allows both strings: DuckDB checks the pattern, then each file it
    matched. DuckDB's glob takes a backslash for a separator, so a name holding both a
    backslash and a glob character cannot be escaped and is refused, as is a name that is not
    UTF-8 (surrogate escapes cannot reach DuckDB)."""
    real = str(path.resolve())
    try:
        real.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{os.fsencode(real)!r}: the path is not UTF-8; rename it") from None
    if not any(c in real for c in _GLOB_CHARS):
        return real, real
    if "\\" in real:
        raise UserError(f"{real!r}: a path with both a backslash and one of * ? [ cannot be read exactly; rename it")
    return real, "".join(f"[{c}]" if c in _GLOB_CHARS else c for c in real)


def duck_error(exc: BaseException, limit: int = 600) -> str:
    """DuckDB's error as one line: its whole first paragraph (``Binder Error: ... not found!``
    plus the ``Candidate bindings`` line), without the ``LINE 1:`` excerpt that follows the
    blank line; control characters from the data escaped."""
    text = str(exc).split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    text = escape_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# C0/C1 controls and DEL, plus the bidirectional overrides and isolates (they reorder what a
# terminal shows): escaped in terminal output, never interpreted.
_UNSAFE = {c for c in range(0x20)} | {0x7F} | set(range(0x80, 0xA0)) | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))
_ESCAPES = {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}
_TRANSLATE = {c: _ESCAPES.get(c, f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def escape_text(text: str) -> str:
    """``text`` safe to print on a terminal: ESC shows as ``\\x1b``, a newline as ``\\n``."""
    return text.translate(_TRANSLATE)


def _text_columns(kind: str) -> str:
    cols = []
    for field in KINDS[kind]:
        if field.type == MESSAGES:
            base = field.name.removesuffix("_response") if field.name == "self_response" else field.name
            # Role-prefixed for prompts (they can be multi-turn), bare content for responses.
            if field.name == "prompt":
                expr = "array_to_string(list_transform(prompt, lambda m: m.role || ': ' || m.content), '\n')"
            else:
                expr = f"array_to_string(list_transform({field.name}, lambda m: m.content), '\n')"
            cols.append(f"{expr} AS {base}_text")
    return (", " + ", ".join(cols)) if cols else ""


def _empty_table(con, kind: str) -> str:
    """An empty table of ``kind``'s schema, registered under a fixed name (re-registering
    replaces it); views over no data select from it."""
    import pyarrow as pa

    name = f"_empty_{kind}"
    con.register(name, pa.Table.from_pylist([], schema=KINDS[kind]))
    return name


_EMPTY_LABEL = "NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS subset"


def _facts_select(kind: str, label: str, source: str) -> str:
    """``KIND_facts`` rows computed from the text of ``source``."""
    scalars = ", ".join(f'"{c}"' for c in scalar_columns(kind))
    return f"SELECT {label}, {scalars}, {fact_select_list(kind)} FROM {source}"


_DUCK_TYPES = {"double": "DOUBLE", "string": "VARCHAR"}  # the types sparse columns have


def _columns(kind: str, present: set[str], names: list[str] | None = None) -> str:
    """The SELECT list of ``kind``'s columns (or ``names``) over one subset's Parquet files: a
    sparse column the files do not hold (macpo/schema.py, SPARSE) reads as a typed NULL, so
    every subset of a kind has the same columns."""
    schema = KINDS[kind]
    out = []
    for name in names if names is not None else schema.names:
        if name in present:
            out.append(f'"{name}"')
        else:
            out.append(f'NULL::{_DUCK_TYPES[str(schema.field(name).type)]} AS "{name}"')
    return ", ".join(out)


def _present_columns(first_file: Path) -> set[str]:
    """The columns one subset's shards hold (every shard of a subset has the same ones)."""
    import pyarrow.parquet as pq

    return set(pq.read_schema(first_file).names)


def _facts_source(kind: str, label: str, data_files: list[Path], stored: list[Path] | None, present: set[str]) -> str:
    """SELECT of one subset's ``KIND_facts`` rows: the stored facts shards side by side with the
    data shards' scalar columns when valid, else the same facts computed from the text."""
    if not stored:
        files = "read_parquet([" + ", ".join(_q(_duck_path(d)[1]) for d in data_files) + "])"
        return _facts_select(kind, label, f"(SELECT {_columns(kind, present)} FROM {files})")
    scalars = ", ".join(f'"{c}"' for c in scalar_columns(kind))
    names = ", ".join(name for name, _ in fact_expressions(kind))
    inner = _columns(kind, present, scalar_columns(kind))
    # POSITIONAL JOIN pairs row i of a data shard with row i of its facts shard; DuckDB still
    # reads only the columns a query uses from either side.
    return " UNION ALL ".join(
        f"SELECT {label}, {scalars}, {names} FROM (SELECT {inner} FROM read_parquet({_q(_duck_path(d)[1])})) "
        f"POSITIONAL JOIN read_parquet({_q(_duck_path(f)[1])})"
        for d, f in zip(data_files, stored)
    )


# ---- resources -------------------------------------------------------------------------------
# Without a limit DuckDB takes 80% of RAM: a cross join that prints 1000 rows peaked at 8.5 GB.
DEFAULT_MEMORY_SHARE = 0.25
# DuckDB's memory_limit governs its buffer manager only; its threads, allocator slack and
# small allocations come on top (0.07-0.29 GB measured on cross joins at 0.3-4 GB limits; 0.42 GB
# once, with the test suite's two workers beside it: a 700 MB limit peaked at 820 MB with 384 MiB
# of headroom), so DuckDB gets the process limit minus what the process already holds minus this.
HEADROOM_BYTES = 512 * 2**20
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


def parse_size(text: str, flag: str = "--memory-limit") -> int:
    """``4GB``, ``512MiB``, ``25%`` (of RAM) or plain bytes -> bytes; anything else is one line."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%|[kmgt]i?b|b)?\s*", text, re.IGNORECASE)
    if not m:
        raise UserError(f"{flag} {text!r}: give a size like 4GB, 512MiB or 25% (of RAM)")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    value = physical_memory() * number / 100 if unit == "%" else number * _UNITS[unit]
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


def _private_temp_dir() -> Path:
    """DuckDB adds its temp directory to ``allowed_directories``; the default is ``<cwd>/.tmp/``,
    which would let a query read and write there. A fresh 0700 folder, removed at exit, holds
    only this connection's spill files."""
    path = Path(tempfile.mkdtemp(prefix="macpo-sql-"))
    _TEMP_DIRS.append(path)
    return path


_TEMP_DIRS: list[Path] = []


@atexit.register
def _remove_temp_dirs() -> None:
    for path in _TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def _leave_interrupted() -> None:
    """Exit 130 at once after Ctrl-C, skipping the interpreter's finalisation.

    After ``con.interrupt()`` DuckDB's own threads can still be unwinding the stopped query when
    the interpreter finalises and the module's destructors run; about one exit in four then
    aborted ("terminate called ... FATAL: exception not rethrown", SIGABRT) instead of
    returning 130. A read-only query has nothing to finish or roll back, so after the message,
    the flushed output and our spill folders, ``os._exit`` is safe.
    """
    sys.stderr.write("macpo sql: interrupted\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _remove_temp_dirs()  # os._exit skips atexit
    os._exit(130)


def _lock_down(con, files: list[str], temp_dir: Path) -> None:
    """Sandbox ``con`` to ``files`` (each a file and its exact glob, ``_duck_path``) and
    ``temp_dir``, lock it, and check what DuckDB reports."""
    con.execute(f"SET temp_directory={_q(temp_dir)}")
    con.execute("SET allowed_directories=[]")
    con.execute("SET allowed_paths=[" + ", ".join(_q(f) for f in files) + "]")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    # current_setting() returns the same settings as duckdb_settings(), as real lists (the
    # latter's text form cannot be split safely: a path may hold ", ").
    dirs, paths, external, locked = con.execute(
        "SELECT current_setting('allowed_directories'), current_setting('allowed_paths'), "
        "current_setting('enable_external_access'), current_setting('lock_configuration')"
    ).fetchone()
    # A bug here is an internal invariant, not a user mistake: a traceback is right.
    extra_dirs = set(dirs) - {str(temp_dir), str(temp_dir) + "/"}
    extra_paths = set(paths) - set(files)
    if extra_dirs or extra_paths or external or not locked:
        raise RuntimeError(f"DuckDB sandbox is wider than the store's data: directories {dirs}, "
                           f"{len(extra_paths)} unexpected paths, external access {external}, locked {locked}")


def connect(sources: list[VersionSource], allowed_dirs: list[Path] | None = None,
            memory_limit: int | None = None, threads: int | None = None):
    """A sandboxed, read-only DuckDB connection with the views over ``sources``.

    The connection can open the data (and facts) files of ``sources`` and nothing else;
    ``allowed_dirs`` is accepted for compatibility and ignored: whole folders are too wide,
    since a folder that can be read can also be written (``COPY ... TO``). ``memory_limit``
    (bytes; default :func:`default_memory_limit`) bounds the whole process, ``threads``
    (default: the usable CPUs) DuckDB's workers; both are locked with the sandbox.
    """
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(config={"threads": threads or usable_cpus(),
                                 "memory_limit": f"{duckdb_memory_limit(memory_limit or default_memory_limit())}B"})
    per_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    per_kind_facts: dict[str, list[str]] = {k: [] for k in KINDS}
    dataset_rows, subset_rows = [], []
    opened: list[str] = []
    for src in sources:
        m = src.manifest
        dataset_rows.append(
            f"SELECT {_q(src.dataset)} AS dataset, {_q(src.version)} AS version, {_q(m.get('content_hash'))} AS content_hash, "
            f"{_q(m.get('parent_hash')) if m.get('parent_hash') else 'NULL'}::VARCHAR AS parent_hash, "
            f"{_q(m.get('config_hash')) if m.get('config_hash') else 'NULL'}::VARCHAR AS config_hash, "
            f"{len(m['subsets'])} AS n_subsets, {sum(s['rows'] for s in m['subsets'].values())}::BIGINT AS n_rows, "
            f"{_q(m.get('created_at', ''))} AS created_at"
        )
        stored_facts = fact_files(src.root, m) if src.use_facts else None
        for subset, entry in m["subsets"].items():
            kind = entry["kind"]
            data = [_duck_path(src.root / f) for f in entry["files"]]
            opened += [name for pair in data for name in pair]
            files = "[" + ", ".join(_q(pattern) for _, pattern in data) + "]"
            label = f"{_q(src.dataset)} AS dataset, {_q(src.version)} AS version, {_q(subset)} AS subset"
            try:
                present = _present_columns(src.root / entry["files"][0])
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"{src.dataset}/{src.version}: {entry['files'][0]} does not read as Parquet "
                                f"({str(exc).splitlines()[0][:160]}); run `macpo status --verify`") from None
            per_kind.setdefault(kind, []).append(f"SELECT {label}, {_columns(kind, present)}{_text_columns(kind)} FROM read_parquet({files})")
            facts = stored_facts and stored_facts[subset]
            if facts:
                opened += [name for f in facts for name in _duck_path(f)]
            per_kind_facts.setdefault(kind, []).append(_facts_source(kind, label, [src.root / f for f in entry["files"]], facts, present))
            subset_rows.append(
                f"SELECT {_q(src.dataset)} AS dataset, {_q(src.version)} AS version, {_q(subset)} AS subset, "
                f"{_q(kind)} AS kind, {entry['rows']}::BIGINT AS n_rows, {_q(entry['content_hash'])} AS content_hash"
            )
    for kind, selects in per_kind.items():
        empty = not selects
        body = " UNION ALL ".join(selects) if selects else f"SELECT {_EMPTY_LABEL}, *{_text_columns(kind)} FROM {_empty_table(con, kind)}"
        facts_body = _facts_select(kind, _EMPTY_LABEL, _empty_table(con, kind)) if empty else " UNION ALL ".join(per_kind_facts[kind])
        try:  # binding a view reads every file's Parquet footer
            con.execute(f"CREATE VIEW {kind} AS {body}")
            con.execute(f"CREATE VIEW {kind}_facts AS {facts_body}")
        except duckdb.Error as exc:
            raise UserError(_unreadable(sources, exc)) from None
    empty_ds = (
        "SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS content_hash, NULL::VARCHAR AS parent_hash, "
        "NULL::VARCHAR AS config_hash, 0 AS n_subsets, 0::BIGINT AS n_rows, NULL::VARCHAR AS created_at WHERE false"
    )
    try:  # a manifest's row counts can add up past BIGINT
        con.execute(f"CREATE VIEW datasets AS {' UNION ALL '.join(dataset_rows) or empty_ds}")
    except duckdb.Error as exc:
        raise UserError(f"the store's manifests do not make a datasets table: {duck_error(exc)}") from None
    empty_sub = (
        "SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS subset, NULL::VARCHAR AS kind, "
        "0::BIGINT AS n_rows, NULL::VARCHAR AS content_hash WHERE false"
    )
    con.execute(f"CREATE VIEW subsets AS {' UNION ALL '.join(subset_rows) or empty_sub}")
    con.execute(
        "CREATE VIEW rounds AS SELECT dataset, CAST(regexp_extract(version, 'round-(\\d+)$', 1) AS INTEGER) AS round, "
        "version, content_hash, parent_hash, config_hash, n_rows, created_at FROM datasets WHERE regexp_matches(version, '^round-\\d+$')"
    )
    _lock_down(con, sorted(set(opened)), _private_temp_dir())
    return con


def _unreadable(sources: list[VersionSource], exc: Exception) -> str:
    """One line naming the version and file DuckDB could not read (same size, other bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for src in sources:
        for entry in src.manifest["subsets"].values():
            for rel in entry["files"]:
                try:
                    pq.read_schema(src.root / rel)
                except (OSError, pa.ArrowException):
                    return (f"{src.dataset}/{src.version}: {rel} does not read as Parquet "
                            f"({duck_error(exc, 200)}); run `macpo status --verify`")
    return f"cannot read the store's data: {duck_error(exc)}"


def _explained(con, text: str):
    """The statements an ``EXPLAIN [ANALYZE] [(options)]`` statement wraps, found with DuckDB's
    own tokenizer (comments skipped), then parsed by DuckDB again."""
    import duckdb

    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]
    i = 1  # tokens[0] is EXPLAIN
    if i < len(tokens) and tokens[i][1] == duckdb.token_type.keyword:
        word = text[tokens[i][0]:].split(None, 1)[0].upper()
        if word in ("ANALYZE", "ANALYSE"):
            i += 1
    if i < len(tokens) and text[tokens[i][0]] == "(":  # an option list: (FORMAT json, ...)
        depth = 0
        while i < len(tokens):
            ch = text[tokens[i][0]]
            depth += ch == "("
            depth -= ch == ")"
            i += 1
            if depth == 0:
                break
    if i >= len(tokens):
        return []
    return con.extract_statements(text[tokens[i][0]:])


def check_read_only(con, sql: str):
    """Parse ``sql`` into statements; refuse anything but SELECT, and EXPLAIN of a SELECT."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"SQL does not parse: {duck_error(exc)}") from None
    if not statements:
        raise UserError("no SQL statement given")
    for st in statements:
        kind = st.type.name
        if kind == "EXPLAIN":
            try:
                inner = _explained(con, st.query)
            except duckdb.Error as exc:
                raise UserError(f"SQL does not parse: {duck_error(exc)}") from None
            if len(inner) != 1 or inner[0].type.name != "SELECT":
                shown = inner[0].type.name if len(inner) == 1 else f"{len(inner)} statements"
                raise UserError(f"refused: EXPLAIN of {shown}; macpo sql is read-only (EXPLAIN only over a SELECT)")
        elif kind != "SELECT":
            raise UserError(f"refused: {kind} statements are not allowed; macpo sql is read-only (SELECT, or EXPLAIN of a SELECT)")
    return statements


def run_query(con, sql: str):
    """Run read-only SQL; return (column names, rows) of each statement (all rows: for tests
    and small results; the CLI streams with ``stream_query``)."""
    results = []
    for st in check_read_only(con, sql):
        cols, rows = None, []
        for cols, batch in stream_query(con, st.query):
            rows += batch
        results.append((cols or [], rows))
    return results


def stream_query(con, query: str, max_rows: int = 0, timeout: float | None = None, batch_rows: int = BATCH_ROWS):
    """Yield ``(column names, rows)`` batches of one checked statement as DuckDB produces them.

    The query runs in a worker thread: DuckDB does not return to Python while it executes, so
    Ctrl-C in the main thread would wait for the whole query. The main thread waits on the
    batches instead; on Ctrl-C or ``timeout`` it calls ``con.interrupt()``, which stops DuckDB
    within milliseconds. ``max_rows`` (0: all) stops fetching once that many rows are out.
    """
    import duckdb

    batches: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def work():
        try:
            result = con.execute(query)
            cols = [d[0] for d in result.description or []]
            sent = 0
            while not stop.is_set():
                want = batch_rows if not max_rows else min(batch_rows, max_rows - sent)
                rows = result.fetchmany(want) if want > 0 else []
                batches.put(("rows", cols, rows))
                sent += len(rows)
                if not rows or len(rows) < want or (max_rows and sent >= max_rows):
                    break
            batches.put(("done", cols, None))
        except BaseException as exc:  # handed to the main thread
            batches.put(("error", None, exc))

    # Not a daemon: the interpreter joins it before finalising, and a thread still inside
    # DuckDB while the interpreter tears down aborts the process ("terminate called ...").
    worker = threading.Thread(target=work, name="macpo-sql-query")
    deadline = time.monotonic() + timeout if timeout else None
    try:
        worker.start()  # inside the try: a Ctrl-C while it starts must still stop the query
        while True:
            if deadline is not None and time.monotonic() > deadline:
                raise UserError(f"query stopped after --timeout {timeout:g} s (raise it, or --timeout 0 for none)")
            try:
                what, cols, payload = batches.get(timeout=0.1)
            except queue.Empty:
                continue
            if what == "error":
                worker.join()
                if isinstance(payload, duckdb.Error):
                    raise UserError(f"query failed: {duck_error(payload)}") from None
                raise payload
            if what == "done":
                worker.join()  # it has nothing left to do; no interrupt that could hit a later query
                return
            if payload or cols is not None:
                yield cols, payload
    finally:
        stop.set()
        while worker.is_alive():
            try:
                con.interrupt()
                try:  # unblock a worker waiting to put a batch
                    batches.get_nowait()
                except queue.Empty:
                    pass
                worker.join(0.05)
            except KeyboardInterrupt:  # a second Ctrl-C: still stop the worker before leaving
                continue


def add_resource_flags(p) -> None:
    """``--memory-limit`` and ``--threads``: the bounds of a command's DuckDB (sql, audit)."""
    p.add_argument("--memory-limit", metavar="SIZE", default=None,
                   help=f"the most memory this command may use, e.g. 4GB, 512MiB or 25%% of RAM (default "
                        f"{DEFAULT_MEMORY_SHARE * 100:.0f}%% of RAM, here {default_memory_limit() / 1e9:.1f}GB); DuckDB spills "
                        "to a private temp folder beyond it, or fails the query with one line")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"DuckDB worker threads (default: the usable CPUs, here {usable_cpus()})")


def resource_args(args) -> dict:
    """``memory_limit`` and ``threads`` for :func:`connect` from the parsed flags, checked."""
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1; got {args.threads}")
    limit = parse_size(args.memory_limit) if args.memory_limit is not None else None
    return {"memory_limit": limit, "threads": args.threads}


def open_store(store_dir: str, hub: list[str] | None = None, dataset: str | None = None, version: str | None = None,
               memory_limit: int | None = None, threads: int | None = None):
    from macpo.store import Store

    store = Store(store_dir)
    sources = store_sources(store, dataset, version)
    for ref in hub or []:
        folder, _sha = snapshot(ref)
        name = ref.partition("@")[0].replace("/", "--")
        sources += snapshot_sources(Path(folder), name)
    return connect(sources, memory_limit=memory_limit, threads=threads)


def _cell(v):
    if isinstance(v, (list, dict)):
        return json.dumps(_json_value(v), ensure_ascii=False)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    return "" if v is None else str(v)


def _json_value(v):
    """A Python value from DuckDB as strict JSON: no NaN/Infinity (null), blobs as base64."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        return (int(v) if v == v.to_integral_value() else float(v)) if v.is_finite() else None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    return str(v)  # intervals, ...


def _clip(text: str, width: int = 60) -> str:
    """A table cell: ``text`` escaped (:func:`escape_text`) and clipped to ``width`` characters
    with "...", never inside an escape (a cut ``\\x1`` would read as other text)."""
    escaped = escape_text(text)
    if len(escaped) <= width:
        return escaped
    out, n = [], 0
    for ch in text:
        piece = escape_text(ch)
        if n + len(piece) > width - 3:
            break
        out.append(piece)
        n += len(piece)
    return "".join(out) + "..."


def unique_names(cols: list[str]) -> list[str]:
    """Column names made unique for JSON objects the way DuckDB renames duplicates: a repeated
    ``a`` becomes ``a_1``, then ``a_2``, ..., skipping names the result already has."""
    taken, out = set(cols), []
    used: set[str] = set()
    for c in cols:
        name, k = c, 0
        while name in used:
            k += 1
            name = f"{c}_{k}"
            if name in taken:
                name = c  # keep looking: that name belongs to another column
        used.add(name)
        out.append(name)
    return out


class _Writer:
    """Writes result batches in one format as they arrive: csv and json exact, the table with
    control characters escaped (data must never drive the user's terminal)."""

    def __init__(self, fmt: str, out):
        self.fmt, self.out, self.rows, self.widths, self.cols = fmt, out, 0, None, None
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None

    def batch(self, cols, rows) -> None:
        if self.cols is None:
            self.cols = cols
            if self.fmt == "csv":
                self.csv.writerow(cols)
            elif self.fmt == "json":
                self.keys = unique_names(cols)
                self.out.write("[")
        if self.fmt == "csv":
            self.csv.writerows([[_cell(v) for v in r] for r in rows])
        elif self.fmt == "json":
            for r in rows:
                self.out.write(("\n" if self.rows == 0 else ",\n")
                               + json.dumps({c: _json_value(v) for c, v in zip(self.keys, r)}, ensure_ascii=False, allow_nan=False))
                self.rows += 1
            self.out.flush()
            return
        else:
            cells = [[_clip(_cell(v)) for v in r] for r in rows]
            if self.widths is None:  # from the first batch: later batches are streamed, not re-measured
                header = [escape_text(c) for c in cols]
                self.widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(header)]
                self.out.write(self._line(header) + "\n" + "-+-".join("-" * w for w in self.widths) + "\n")
            for r in cells:
                self.out.write(self._line(r) + "\n")
        self.rows += len(rows)
        self.out.flush()

    def _line(self, vals) -> str:
        return " | ".join(v.ljust(w) for v, w in zip(vals, self.widths)).rstrip()

    def end(self, truncated: bool, max_rows: int) -> None:
        if self.cols is None:
            self.batch([], [])
        if self.fmt == "json":
            self.out.write("\n]\n" if self.rows else "]\n")
        elif self.fmt == "table":
            more = f"; stopped at --max-rows {max_rows}, pass --max-rows 0 for all" if truncated else ""
            self.out.write(f"({self.rows} row{'s' if self.rows != 1 else ''}{more})\n")
        self.out.flush()
        if truncated and self.fmt != "table":
            print(f"macpo sql: note: output stopped at --max-rows {max_rows}", file=sys.stderr)


def print_result(cols, rows, fmt: str, out=sys.stdout) -> None:
    w = _Writer(fmt, out)
    w.batch(cols, rows)
    w.end(False, 0)


def main(argv: list[str]) -> int:
    p = make_parser("sql", __doc__)
    p.add_argument("query", help="SQL: SELECT, or EXPLAIN of a SELECT")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format")
    p.add_argument("--hub", action="append", metavar="ORG/NAME[@REV]", help="also attach a published Hub dataset (local snapshot)")
    p.add_argument("--max-rows", type=int, default=None, metavar="N",
                   help=f"stop after N rows per statement; 0 = all (default {TABLE_MAX_ROWS} for table, all for csv/json)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help=f"stop a statement after S seconds, a finite number; 0 = none (default {TABLE_TIMEOUT_S:g} for table, none for csv/json)")
    add_resource_flags(p)
    args = p.parse_args(argv)
    import faulthandler
    import signal

    # `kill -USR1 <pid>` prints every thread's Python stack to stderr: for a query that will not stop.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    terminal = args.format == "table"
    max_rows = args.max_rows if args.max_rows is not None else (TABLE_MAX_ROWS if terminal else 0)
    timeout = args.timeout if args.timeout is not None else (TABLE_TIMEOUT_S if terminal else 0)
    if max_rows < 0:
        raise UserError("--max-rows must be >= 0")
    if not math.isfinite(timeout) or timeout < 0:
        raise UserError(f"--timeout must be a finite number of seconds, > 0 (or 0 for none); got {args.timeout!r}")
    con = open_store(args.store, args.hub, **resource_args(args))
    try:
        for st in check_read_only(con, args.query):
            writer = _Writer(args.format, sys.stdout)
            for cols, rows in stream_query(con, st.query, max_rows=max_rows + 1 if max_rows else 0, timeout=timeout or None):
                room = max_rows - writer.rows if max_rows else len(rows)
                writer.batch(cols, rows[:room])
                if max_rows and len(rows) > room:
                    writer.end(True, max_rows)
                    break
            else:
                writer.end(False, max_rows)
    except KeyboardInterrupt:
        _leave_interrupted()
    except BrokenPipeError:  # `macpo sql ... | head`: the reader has what it wanted
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    return 0


if __name__ == "__main__":
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["sql", *sys.argv[1:]]))
