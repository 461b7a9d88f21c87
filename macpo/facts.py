"""Per-row facts about the message columns, kept beside each version for fast audits.

Audits ask a few questions of every row (are chosen and rejected the same, is a response
blank, which is longer, has this prompt been seen elsewhere). Answering them from the
message text reads gigabytes per audit on a 10M-row store (~2 s each on two cores), so
``Store.write`` also writes, per Parquet shard, a narrow "facts" shard with one row per
stored row: for each message column ``M``

- ``M_key``: DuckDB's 64-bit ``hash(M)`` of the message list (equality and grouping);
- ``M_bytes``: total UTF-8 bytes of the messages' content;
- ``M_blank``: no message has non-whitespace content (true for a null list).

Each facts shard is recorded in ``facts.json`` (the facts' own manifest) with its data
shard's row count and sha256 and its own size and sha256. :func:`fact_files` checks the
counts and sizes (cheaply: Parquet footers, one stat); audits also check every facts shard's
sha256 (:func:`check_facts`), and ``status --verify`` and ``push`` recompute the facts from
the data (:func:`facts_problems`), which catches a forged shard even when ``facts.json`` was
forged to match. Facts that do not match are rebuilt or computed from the text, never
joined: a POSITIONAL JOIN of shards of different lengths pads with NULLs silently.

The facts are *defined* by the SQL expressions below. A stored facts shard is only a
cache of them, valid for one DuckDB version (``hash`` is not promised stable across DuckDB
releases, and keys from two versions must never meet in one query), so
:func:`fact_files` ignores facts written by another DuckDB or format, and ``macpo sql``
then computes the same expressions from the text. They sit in ``VERSION/.facts/``, outside
the manifest and the content hash, and are not published to the Hub.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from macpo.fsutil import WRITER_LOCK, fsync_dir, make_read_only, write_parquet, writer_gone
from macpo.hashing import file_sha256
from macpo.schema import KINDS, MESSAGES

FACTS_DIR = ".facts"
FACTS_META = "facts.json"
# /3: each facts shard's own size and sha256 (facts written by /2 are rebuilt on the next audit).
FACTS_FORMAT = "macpo-facts/3"
FACTS_TMP = ".facts-tmp-"
FACTS_STALE = ".facts-stale-"
# Errors of a store that cannot be written (read-only mount or permissions, disk or quota full):
# the audits then compute the facts from the text instead of failing.
WRITE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def engine() -> str:
    import duckdb

    return f"duckdb {duckdb.__version__}"


def message_columns(kind: str) -> list[str]:
    return [f.name for f in KINDS[kind] if f.type == MESSAGES]


def scalar_columns(kind: str) -> list[str]:
    return [f.name for f in KINDS[kind] if f.type != MESSAGES]


def fact_expressions(kind: str) -> list[tuple[str, str]]:
    """(column name, SQL expression over the kind's columns) of every fact, in view order."""
    out = []
    for m in message_columns(kind):
        out += [
            (f"{m}_key", f"hash({m})"),
            (f"{m}_bytes", f"coalesce(list_sum(list_transform({m}, lambda x: strlen(x.content))), 0)::BIGINT"),
            (f"{m}_blank", f"NOT coalesce(list_bool_or(list_transform({m}, lambda x: regexp_matches(x.content, '\\S'))), false)"),
        ]
    return out


def fact_select_list(kind: str) -> str:
    """``expr AS name, ...``: the facts as a SELECT list over the kind's columns."""
    return ", ".join(f"{expr} AS {name}" for name, expr in fact_expressions(kind))


def compute_facts(con, table: pa.Table, kind: str) -> pa.Table:
    """The facts of ``table``'s rows, in its row order and in :func:`fact_expressions` order.

    Keys come from DuckDB's ``hash`` itself (it is the definition); byte lengths and blank
    flags are computed in Arrow, about 2x cheaper than the SQL lambdas on one thread, with the
    same meaning (RE2's ``\\S`` in both, null content counts as empty; tests/test_facts.py).
    """
    columns = message_columns(kind)
    con.register("_facts_source", table.select(columns))
    try:
        keys = con.sql("SELECT " + ", ".join(f"hash({m}) AS {m}_key" for m in columns) + " FROM _facts_source").to_arrow_table()
    finally:
        con.unregister("_facts_source")
    out = {}
    for m in columns:
        n_bytes, blank = _bytes_and_blank(table.column(m))
        out[f"{m}_key"] = keys.column(f"{m}_key")
        out[f"{m}_bytes"] = pa.array(n_bytes, pa.int64())
        out[f"{m}_blank"] = pa.array(blank, pa.bool_())
    return pa.table(out)


def _bytes_and_blank(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a message-list column: total content bytes, and whether no content has a
    non-whitespace character. Chunk by chunk: ``combine_chunks`` would copy every string."""
    sizes, blanks = [], []
    for chunk in column.chunks:
        content = pc.list_flatten(chunk).field("content")
        lengths = pc.fill_null(pc.binary_length(content), 0).to_numpy(zero_copy_only=False)
        nonblank = pc.fill_null(pc.match_substring_regex(content, r"\S"), False).to_numpy(zero_copy_only=False)
        counts = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False)
        bounds = np.zeros(len(chunk) + 1, np.int64)
        np.cumsum(counts, out=bounds[1:])
        # Segment sums as differences of running sums (np.add.reduceat mishandles empty lists).
        running_bytes = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        running_nonblank = np.concatenate([[0], np.cumsum(nonblank, dtype=np.int64)])
        sizes.append(running_bytes[bounds[1:]] - running_bytes[bounds[:-1]])
        blanks.append(running_nonblank[bounds[1:]] == running_nonblank[bounds[:-1]])
    if not sizes:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    return np.concatenate(sizes), np.concatenate(blanks)


def write_facts_shard(facts: pa.Table, out: Path) -> dict:
    """Write one facts shard; return its ``{"size", "sha256"}`` (hashed from disk, as read back)."""
    return write_parquet(facts, out)


def write_meta(facts_dir: Path, files: dict[str, list[str]], shards: dict[str, dict]) -> None:
    """Record which facts shards exist (``files``: subset -> shard paths relative to the version)
    and, per data shard (``shards``: its path -> ``{"rows", "data_sha256", "size", "sha256"}``),
    what they index and their own size and sha256."""
    path = facts_dir / FACTS_META
    with open(path, "w") as fh:
        json.dump({"format": FACTS_FORMAT, "engine": engine(), "subsets": files, "shards": shards}, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    make_read_only(path)


def facts_path(rel: str) -> str:
    """Where the facts of data shard ``rel`` (``SUBSET/train-….parquet``) live, relative to the version."""
    return f"{FACTS_DIR}/{rel}"


def fact_files(version_dir: Path, manifest: dict) -> dict[str, list[Path]] | None:
    """The facts shards of every subset of a version, aligned with its data shards, or None
    when they are missing, incomplete, written by another DuckDB or facts format, or do not
    match their data shards or their own records (row counts in the Parquet footers, sizes,
    sha256 of the data in the manifest). Cheap: no file is hashed (:func:`check_facts` does)."""
    return check_facts(version_dir, manifest, hash_files=False)[0]


def check_facts(version_dir: Path, manifest: dict, hash_files: bool = True) -> tuple[dict[str, list[Path]] | None, str | None]:
    """``(paths, problem)``: the facts shards per subset when they are valid (``paths``), and
    what is wrong with facts that claim to be current but do not match (``problem``, else None).

    Facts that are absent or were written by another DuckDB or facts format are ``(None,
    None)``: a cache to rebuild, not damage. ``hash_files`` also checks each facts shard's sha256
    against ``facts.json``.
    """
    meta_path = version_dir / FACTS_DIR / FACTS_META
    if not meta_path.exists() and not meta_path.is_symlink():
        return None, None
    try:
        meta = json.loads(meta_path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        return None, f"{FACTS_DIR}/{FACTS_META} does not read as JSON ({str(exc).splitlines()[0][:120]})"
    if not isinstance(meta, dict):
        return None, f"{FACTS_DIR}/{FACTS_META} is not a JSON object"
    if meta.get("format") != FACTS_FORMAT or meta.get("engine") != engine():
        return None, None
    records = manifest.get("files") or {}
    shards = meta.get("shards") if isinstance(meta.get("shards"), dict) else {}
    subsets = meta.get("subsets") if isinstance(meta.get("subsets"), dict) else {}
    real_dir = version_dir.resolve()
    out = {}
    for subset, entry in manifest["subsets"].items():
        expected = [facts_path(rel) for rel in entry["files"]]
        if subsets.get(subset) != expected:
            return None, f"{FACTS_DIR}/{FACTS_META} does not list the facts of subset {subset!r}"
        paths = [version_dir / rel for rel in expected]
        total = 0
        for rel, facts_file in zip(entry["files"], paths):
            info = shards.get(rel)
            where = facts_path(rel)
            if not isinstance(info, dict):
                return None, f"{FACTS_DIR}/{FACTS_META} has no record of {where}"
            if not facts_file.is_file():
                return None, f"{where}: missing"
            if not facts_file.resolve().is_relative_to(real_dir):  # a link out would widen the SQL sandbox
                return None, f"{where}: a link out of its version folder"
            if rel in records and info.get("data_sha256") != records[rel]["sha256"]:
                return None, f"{where}: indexes another {rel} (its sha256 differs from the manifest's)"
            size = facts_file.stat().st_size
            if size != info.get("size"):
                return None, f"{where}: {size} bytes, {FACTS_META} says {info.get('size')!r}"
            try:
                data_rows = pq.read_metadata(version_dir / rel).num_rows
            except (OSError, pa.ArrowException):
                return None, None  # damaged data, not facts: the data's own checks name it
            try:
                facts_rows = pq.read_metadata(facts_file).num_rows
            except (OSError, pa.ArrowException) as exc:
                return None, f"{where}: does not read as Parquet ({str(exc).splitlines()[0][:120]})"
            if not (facts_rows == data_rows == info.get("rows")):
                return None, f"{where}: {facts_rows} rows for {data_rows} data rows ({FACTS_META} says {info.get('rows')!r})"
            if hash_files:
                actual = file_sha256(facts_file)
                if actual != info.get("sha256"):
                    return None, f"{where}: sha256 {actual[:16]}…, {FACTS_META} says {str(info.get('sha256'))[:16]}…"
            total += data_rows
        if total != entry["rows"]:
            return None, f"the facts of subset {subset!r} hold {total} rows, the manifest says {entry['rows']}"
        out[subset] = paths
    return out, None


def facts_problems(version_dir: Path, manifest: dict, recompute: bool = True) -> list[str]:
    """What is wrong with a version's stored facts, [] when they are intact or absent: every
    facts shard's size, rows and sha256 against ``facts.json``, then (``recompute``) the facts
    computed again from each data shard and compared row by row, which also catches a shard
    whose forger updated ``facts.json`` to match. The data itself is checked by the caller."""
    import duckdb

    paths, problem = check_facts(version_dir, manifest, hash_files=True)
    if problem:
        return [problem]
    if paths is None or not recompute:
        return []
    problems = []
    con = duckdb.connect(config={"threads": 1})
    try:
        for subset, entry in manifest["subsets"].items():
            for rel, facts_file in zip(entry["files"], paths[subset]):
                data = pq.read_table(version_dir / rel, columns=message_columns(entry["kind"]))
                expected = compute_facts(con, data, entry["kind"])
                stored = pq.read_table(facts_file)
                if stored.column_names != expected.column_names:
                    problems.append(f"{facts_path(rel)}: columns {stored.column_names}, expected {expected.column_names}")
                    continue
                for name in expected.column_names:
                    want, got = expected.column(name), stored.column(name).cast(expected.schema.field(name).type, safe=False)
                    if not got.equals(want):
                        import pyarrow.compute as pc

                        diff = pc.invert(pc.fill_null(pc.equal(want, got), False))
                        first = pc.index(diff, True).as_py()
                        problems.append(f"{facts_path(rel)}: {name} differs from the facts of {rel} "
                                        f"({pc.sum(diff).as_py()} rows, first row {first})")
                        break
    finally:
        con.close()
    return problems


def remove_stale_tmp(version_dir: Path) -> None:
    """Remove the temporary facts folders of audits killed while indexing this version."""
    for tmp in stale_tmp(version_dir):
        shutil.rmtree(tmp, ignore_errors=True)


def stale_tmp(version_dir: Path) -> list[Path]:
    """``.facts-tmp-*`` folders whose audit is gone (no live lock), and ``.facts-stale-*`` ones
    (old facts a replacing audit was removing when it died)."""
    found = []
    try:
        entries = sorted(version_dir.iterdir())
    except OSError:
        return []
    for p in entries:
        if p.name.startswith(FACTS_TMP) and p.is_dir() and writer_gone(p):
            found.append(p)
        elif p.name.startswith(FACTS_STALE) and p.is_dir():
            found.append(p)
    return found


def write_facts_dir(facts_dir: Path, shards, progress=None, data_sha256=None) -> None:
    """Compute and write the facts shards of ``shards`` — ``(subset, kind, rel, rows)`` tuples,
    ``rel`` being the data shard's path relative to the version — plus ``facts.json``, all
    fsynced and read-only, into ``facts_dir`` (a version's ``.facts`` or a temporary folder
    renamed to it). ``data_sha256()`` gives each data shard's sha256 once they are all written."""
    import duckdb

    facts_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": 1})  # Store.write: the other core is writing Parquet
    files: dict[str, list[str]] = {}
    rows: dict[str, int] = {}
    own: dict[str, dict] = {}
    try:
        for subset, kind, rel, part in shards:
            if subset not in files:
                (facts_dir / subset).mkdir(parents=True)
                files[subset] = []
            own[rel] = write_facts_shard(compute_facts(con, part, kind), facts_dir / rel)
            files[subset].append(facts_path(rel))
            rows[rel] = part.num_rows
            if progress is not None:
                progress()
    finally:
        con.close()
    for subset in files:
        fsync_dir(facts_dir / subset)
    hashes = data_sha256() if data_sha256 is not None else {}
    write_meta(facts_dir, files, {rel: {"rows": n, "data_sha256": hashes.get(rel), **own[rel]} for rel, n in rows.items()})
    fsync_dir(facts_dir)


def ensure_facts(version_dir: Path, manifest: dict, progress=None, force: bool = False) -> bool:
    """Write the facts of an already committed version unless valid ones exist (every shard's
    sha256 checked), or always with ``force`` (facts that failed :func:`facts_problems`).

    Built in a temporary folder held by a lock (as the store's writers do) and renamed into
    place, so a crash leaves either the old facts or complete new ones, plus a temporary
    folder that ``status`` reports and the next audit removes. Returns True when facts were
    written.
    """
    remove_stale_tmp(version_dir)
    if not force and check_facts(version_dir, manifest)[0] is not None:
        return False
    tmp = version_dir / f"{FACTS_TMP}{uuid.uuid4().hex[:8]}"
    shards = (
        (subset, entry["kind"], rel, pq.read_table(version_dir / rel, columns=message_columns(entry["kind"])))
        for subset, entry in manifest["subsets"].items()
        for rel in entry["files"]
    )
    records = manifest.get("files") or {}
    lock = None
    try:
        tmp.mkdir()
        lock = open(tmp / WRITER_LOCK, "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_facts_dir(tmp, shards, progress, data_sha256=lambda: {rel: r["sha256"] for rel, r in records.items()})
        old = version_dir / FACTS_DIR
        if not force and check_facts(version_dir, manifest)[0] is not None:  # another audit indexed it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        os.unlink(tmp / WRITER_LOCK)  # not part of the facts; the flock stays held until the rename
        if old.exists():
            stale = version_dir / f"{FACTS_STALE}{uuid.uuid4().hex[:8]}"
            os.rename(old, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.close()
    return True
