"""Canonical, order-independent content hashes of Arrow tables.

A row's canonical form is a length-prefixed encoding of every column value, built with
vectorised pyarrow compute kernels (no per-row JSON: that costs ~10 s per million rows,
research/perf-baselines.md §5). Each row is hashed with sha256; the table hash is sha256
over the *sorted* row digests, so it does not depend on row order, Parquet writer
metadata or the pyarrow version: only on the values and the column names.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_FORMAT = "macpo-rows/1"


def _s(text: str, n: int) -> pa.Array:
    return pa.array([text] * n, pa.string()) if n else pa.array([], pa.string())


def _encode(arr: pa.Array) -> pa.StringArray:
    """Encode each value of ``arr`` as a self-delimiting string (same length, no nulls)."""
    n = len(arr)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        body = pc.binary_join_element_wise(
            _s("s", n), pc.cast(pc.binary_length(arr), pa.string()), _s(":", n), arr.cast(pa.string()), ""
        )
    elif pa.types.is_integer(t):
        body = pc.binary_join_element_wise(_s("i", n), pc.cast(arr, pa.string()), "")
    elif pa.types.is_floating(t):
        # The IEEE-754 bits, so the encoding never depends on float formatting.
        bits = pc.cast(arr, pa.float64()).view(pa.int64())
        body = pc.binary_join_element_wise(_s("f", n), pc.cast(bits, pa.string()), "")
    elif pa.types.is_boolean(t):
        body = pc.if_else(arr, _s("b1", n), _s("b0", n))
    elif pa.types.is_struct(t):
        parts = []
        for i in range(t.num_fields):
            name = t.field(i).name
            parts += [_s(f"{len(name)}:{name}=", n), _encode(arr.field(i))]
        body = pc.binary_join_element_wise(_s("{", n), *parts, _s("}", n), "")
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        offsets = arr.offsets
        offsets = pc.subtract(offsets, offsets[0])
        flat = _encode(arr.flatten())
        joined = pc.binary_join(pa.ListArray.from_arrays(offsets.cast(pa.int32()), flat), "")
        body = pc.binary_join_element_wise(_s("[", n), joined, _s("]", n), "")
    elif pa.types.is_null(t):
        return _s("~", n)
    else:
        raise TypeError(f"no canonical encoding for Arrow type {t}")
    if arr.null_count:
        body = pc.if_else(pc.is_null(arr), _s("~", n), body)
    return body.cast(pa.string())


def canonical_rows(table: pa.Table) -> pa.StringArray:
    """One canonical string per row, covering every column in name order."""
    n = table.num_rows
    parts = []
    for name in sorted(table.column_names):
        column = table.column(name).combine_chunks()
        parts += [_s(f"{len(name)}:{name}=", n), _encode(column)]
    if not parts:
        return _s("", n)
    return pc.binary_join_element_wise(*parts, "")


def row_digests(table: pa.Table) -> np.ndarray:
    """sha256 digest of every row, as a numpy array of 32-byte strings."""
    rows = canonical_rows(table)
    if len(rows) == 0:
        return np.array([], dtype="S32")
    # Slice the value buffer by offsets instead of materialising Python str objects.
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    data = memoryview(rows.buffers()[2])
    sha = hashlib.sha256
    digests = b"".join([sha(data[a:b]).digest() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())])
    return np.frombuffer(digests, dtype="S32")


def table_hash(table: pa.Table) -> str:
    """Order-independent sha256 of a table's rows."""
    digests = np.sort(row_digests(table))
    h = hashlib.sha256(HASH_FORMAT.encode() + b"\n")
    h.update(digests.tobytes())
    return "sha256:" + h.hexdigest()


def json_hash(obj) -> str:
    """sha256 of canonical JSON (sorted keys, compact): for configs and manifests."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
