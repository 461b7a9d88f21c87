"""Per-row facts about the message columns, kept beside each version for fast audits.

Audits ask a few questions of every row (are chosen and rejected the same, is a response
blank, which is longer, has this prompt been seen elsewhere). Answering them from the
message text reads gigabytes per audit on a 10M-row store (~2 s each on two cores), so
``Store.write`` also writes, per Parquet shard, a narrow "facts" shard with one row per
stored row: for each message column ``M``

- ``M_key``: DuckDB's 64-bit ``hash(M)`` of the message list (equality and grouping);
- ``M_bytes``: total UTF-8 bytes of the messages' content;
- ``M_blank``: no message has non-whitespace content (true for a null list).

Each facts shard is recorded in ``facts.json`` with its data shard's row count and sha256;
:func:`fact_files` checks both against the data shard and the manifest (cheaply: Parquet
footers), and a mismatch means the facts are rebuilt or computed from the text, never
joined: a POSITIONAL JOIN of shards of different lengths pads with NULLs silently.

The facts are *defined* by the SQL expressions below. A stored facts shard is only a
cache of them, valid for one DuckDB version (``hash`` is not promised stable across DuckDB
releases, and keys from two versions must never meet in one query), so
:func:`fact_files` ignores facts written by another DuckDB or format, and ``macpo sql``
then computes the same expressions from the text. They sit in ``VERSION/.facts/``, outside
the manifest and the content hash, and are not published to the Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from macpo.fsutil import fsync_dir, make_read_only
from macpo.schema import KINDS, MESSAGES

FACTS_DIR = ".facts"
FACTS_META = "facts.json"
FACTS_FORMAT = "macpo-facts/2"


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


def write_facts_shard(facts: pa.Table, out: Path) -> None:
    with open(out, "wb") as fh:
        pq.write_table(facts, fh, compression="snappy")
        fh.flush()
        os.fsync(fh.fileno())
    make_read_only(out)


def write_meta(facts_dir: Path, files: dict[str, list[str]], shards: dict[str, dict]) -> None:
    """Record which facts shards exist (``files``: subset -> shard paths relative to the version)
    and, per data shard (``shards``: its path -> ``{"rows", "data_sha256"}``), what they index."""
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
    match their data shards (row counts in the Parquet footers, sha256 in the manifest)."""
    try:
        meta = json.loads((version_dir / FACTS_DIR / FACTS_META).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FACTS_FORMAT or meta.get("engine") != engine():
        return None
    records = manifest.get("files") or {}
    shards = meta.get("shards") if isinstance(meta.get("shards"), dict) else {}
    real_dir = version_dir.resolve()
    out = {}
    for subset, entry in manifest["subsets"].items():
        expected = [facts_path(rel) for rel in entry["files"]]
        if meta.get("subsets", {}).get(subset) != expected:
            return None
        paths = [version_dir / rel for rel in expected]
        total = 0
        for rel, facts_file in zip(entry["files"], paths):
            info = shards.get(rel)
            if not isinstance(info, dict) or not facts_file.is_file():
                return None
            if not facts_file.resolve().is_relative_to(real_dir):  # a link out would widen the SQL sandbox
                return None
            if rel in records and info.get("data_sha256") != records[rel]["sha256"]:
                return None
            try:
                facts_rows = pq.read_metadata(facts_file).num_rows
                data_rows = pq.read_metadata(version_dir / rel).num_rows
            except (OSError, pa.ArrowException):
                return None
            if not (facts_rows == data_rows == info.get("rows")):
                return None
            total += data_rows
        if total != entry["rows"]:
            return None
        out[subset] = paths
    return out


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
    try:
        for subset, kind, rel, part in shards:
            if subset not in files:
                (facts_dir / subset).mkdir(parents=True)
                files[subset] = []
            write_facts_shard(compute_facts(con, part, kind), facts_dir / rel)
            files[subset].append(facts_path(rel))
            rows[rel] = part.num_rows
            if progress is not None:
                progress()
    finally:
        con.close()
    for subset in files:
        fsync_dir(facts_dir / subset)
    hashes = data_sha256() if data_sha256 is not None else {}
    write_meta(facts_dir, files, {rel: {"rows": n, "data_sha256": hashes.get(rel)} for rel, n in rows.items()})
    fsync_dir(facts_dir)


def ensure_facts(version_dir: Path, manifest: dict, progress=None) -> bool:
    """Write the facts of an already committed version unless valid ones exist.

    Built in a temporary folder and renamed into place, so a crash leaves either no facts or
    complete ones. Returns True when facts were written.
    """
    if fact_files(version_dir, manifest) is not None:
        return False
    tmp = version_dir / f".facts-tmp-{uuid.uuid4().hex[:8]}"
    shards = (
        (subset, entry["kind"], rel, pq.read_table(version_dir / rel, columns=message_columns(entry["kind"])))
        for subset, entry in manifest["subsets"].items()
        for rel in entry["files"]
    )
    records = manifest.get("files") or {}
    try:
        write_facts_dir(tmp, shards, progress, data_sha256=lambda: {rel: r["sha256"] for rel, r in records.items()})
        old = version_dir / FACTS_DIR
        if fact_files(version_dir, manifest) is not None:  # another audit indexed it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        if old.exists():
            stale = version_dir / f".facts-stale-{uuid.uuid4().hex[:8]}"
            os.rename(old, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True
