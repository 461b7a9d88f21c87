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
``--memory-limit`` (default a quarter of RAM), ``--threads`` and ``--max-spill`` (default a
quarter of the free temp space) bound DuckDB, and Ctrl-C stops a running query (exit 130). Data files are read by exact path: a folder named ``h?``
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
from pathlib import Path

from macpo.cliutil import make_parser, run_script
from macpo.errors import UserError
from macpo.hub import snapshot
from macpo.sql_limits import (add_resource_flags, default_max_spill, default_memory_limit, duckdb_memory_limit,
                               resource_args, usable_cpus)
from macpo.sql_views import VersionSource, create_views, duck_error, escape_text, quote, snapshot_sources, store_sources
from macpo.store import Store

BATCH_ROWS = 1000
# Defaults for the terminal format: a person reading a table wants a screenful, not 10M rows,
# and a runaway join should end by itself. csv/json are for pipes: no limits unless asked.
TABLE_MAX_ROWS = 1000
TABLE_TIMEOUT_S = 600.0


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
    """Sandbox ``con`` to ``files`` (each a file and its exact glob, ``duck_path``) and
    ``temp_dir``, lock it, and check what DuckDB reports."""
    con.execute(f"SET temp_directory={quote(temp_dir)}")
    con.execute("SET allowed_directories=[]")
    con.execute("SET allowed_paths=[" + ", ".join(quote(f) for f in files) + "]")
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
            memory_limit: int | None = None, threads: int | None = None, max_spill: int | None = None):
    """A sandboxed, read-only DuckDB connection with the views over ``sources``.

    The connection can open the data (and facts) files of ``sources`` and nothing else;
    ``allowed_dirs`` is accepted for compatibility and ignored: whole folders are too wide,
    since a folder that can be read can also be written (``COPY ... TO``). ``memory_limit``
    (bytes; default :func:`default_memory_limit`) bounds the whole process, ``threads``
    (default: the usable CPUs) DuckDB's workers, ``max_spill`` (bytes; default
    :func:`default_max_spill`) its spill files; all are locked with the sandbox.
    """
    import duckdb  # lazy: `macpo status` and every --help load this module; duckdb takes ~90 ms

    con = duckdb.connect(config={"threads": threads or usable_cpus(),
                                 "memory_limit": f"{duckdb_memory_limit(memory_limit or default_memory_limit())}B",
                                 "max_temp_directory_size": f"{max_spill or default_max_spill()}B"})
    opened = create_views(con, sources)
    _lock_down(con, sorted(set(opened)), _private_temp_dir())
    return con


def _explained(con, text: str):
    """The statements an ``EXPLAIN [ANALYZE] [(options)]`` statement wraps, found with DuckDB's
    own tokenizer (comments skipped), then parsed by DuckDB again."""
    import duckdb  # lazy: `macpo status` and every --help load this module; duckdb takes ~90 ms

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
    import duckdb  # lazy: `macpo status` and every --help load this module; duckdb takes ~90 ms

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
    import duckdb  # lazy: `macpo status` and every --help load this module; duckdb takes ~90 ms

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
                    raise UserError(f"query failed: {_query_error(payload)}") from None
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


def _query_error(exc) -> str:
    """DuckDB's error as one line; a full spill folder in the flags' terms (DuckDB's own text
    suggests a SET, which the locked sandbox refuses)."""
    if "max_temp_directory_size" in str(exc):
        return ("the query needs more spill space on disk than --max-spill allows (beyond --memory-limit in memory); "
                "raise either, or narrow the query")
    return duck_error(exc)


def open_store(store_dir: str, hub: list[str] | None = None, dataset: str | None = None, version: str | None = None,
               memory_limit: int | None = None, threads: int | None = None, max_spill: int | None = None):
    store = Store(store_dir)
    sources = store_sources(store, dataset, version)
    for ref in hub or []:
        folder, _sha = snapshot(ref)
        name = ref.partition("@")[0].replace("/", "--")
        sources += snapshot_sources(Path(folder), name)
    return connect(sources, memory_limit=memory_limit, threads=threads, max_spill=max_spill)


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
    run_script("macpo sql", main)
