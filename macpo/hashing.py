"""Canonical, order-independent content hashes of Arrow tables.

A row's canonical form is a byte string defined by the column names, a normalised type
signature and the values, never by Arrow's physical layout, Parquet writer metadata or the
pyarrow/DuckDB version. Each row is hashed with sha256 (row digest); the table hash is
sha256 over the *sorted* row digests, so row order does not matter either.

Row encoding (format ``macpo-rows/2``)::

    row   = header ‖ stream_1 ‖ stream_2 ‖ …

and the table hash covers the type signature (column names and normalised types) too.

Columns are taken in name order. Each value contributes fixed-width little-endian fields to
``header`` and, for variable-length data, bytes to its own stream:

- string / binary: int32 byte length (-1 = null) in the header; the bytes in a stream;
- integer: uint8 validity + int64 value (0 when null); unsigned: uint64;
- float: uint8 validity + the float64 IEEE-754 bits (one canonical NaN);
- boolean: uint8 0 / 1, 2 = null;
- struct: uint8 validity, then its fields (nulls propagated into the fields);
- list: int32 element count (-1 = null); its elements are encoded *column-wise within the
  row*: one stream holds the elements' own headers, then one stream per child stream.

Every length is known from bytes before it, so the encoding is injective: moving a value
boundary (``"ab","c"`` vs ``"a","bc"``) or turning ``""`` into null changes the row bytes.
The layout is chosen so that a row's bytes in each stream are *contiguous* in Arrow's
buffers (a list's child strings sit next to each other), which lets the whole encoding be
built from offsets arithmetic in numpy plus one ``binary_join_element_wise`` per chunk: no
per-row JSON (10 s per million rows, docs/runtime-notes.md) and no per-message strings.
What remains per row is one ``hashlib.sha256`` call.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_FORMAT = "macpo-rows/2"
# Rows per joined chunk: the joined bytes (~1 KB a row) stay in cache while they are hashed.
CHUNK_ROWS = 4096
_PACK_BLOCK = 16384
_CANONICAL_NAN = np.array([np.nan], dtype="<f8").view("<u8")[0]
_BIN = pa.large_binary()


# ---- type signature ------------------------------------------------------------------
def _signature(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _signature(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "str"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "bin"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_signed_integer(t):
        return "int"
    if pa.types.is_unsigned_integer(t):
        return "uint"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit},{t.tz or ''}]"
    if pa.types.is_date32(t) or pa.types.is_date64(t):
        return str(t)  # date32[day] and date64[ms] count different units
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return f"list<{_signature(t.value_type)}>"
    if pa.types.is_struct(t):
        fields = ",".join(f"{len(f.name)}:{f.name}:{_signature(f.type)}" for f in t)
        return f"struct<{fields}>"
    raise TypeError(f"no canonical encoding for Arrow type {t}")


def table_signature(table: pa.Table | pa.RecordBatch) -> str:
    cols = sorted(zip(table.schema.names, table.schema.types))
    return HASH_FORMAT + "\n" + "\n".join(f"{len(n)}:{n}:{_signature(t)}" for n, t in cols)


# ---- column encoders -------------------------------------------------------------------
# An encoding of m values is (fields, streams): ``fields`` a list of (numpy dtype string,
# array of length m) header fields, ``streams`` a list of (int64 offsets of length m+1,
# pyarrow Buffer) whose byte range [offsets[i], offsets[i+1]) belongs to value i.


def _valid(arr: pa.Array) -> np.ndarray | None:
    if arr.null_count == 0:
        return None
    return pc.is_valid(arr).to_numpy(zero_copy_only=False)


def _normalise(arr: pa.Array) -> pa.Array:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _normalise(arr.dictionary_decode())
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return _normalise(arr.cast(pa.large_binary()))
    if pa.types.is_list_view(t):
        return _normalise(arr.cast(pa.list_(t.value_type)))
    if pa.types.is_large_list_view(t):
        return _normalise(arr.cast(pa.large_list(t.value_type)))
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return arr.view(pa.int32() if pa.types.is_date32(t) else pa.int64())
    return arr


def _offsets(arr: pa.Array) -> np.ndarray:
    """The m+1 offsets of a (large) string/binary/list array, as int64, slice-adjusted."""
    width = np.int64 if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type) or pa.types.is_large_list(arr.type) else np.int32
    raw = np.frombuffer(arr.buffers()[1], dtype=width, count=len(arr) + 1, offset=arr.offset * np.dtype(width).itemsize)
    return raw.astype(np.int64)


def _encode(arr: pa.Array):
    arr = _normalise(arr)
    t = arr.type
    m = len(arr)
    valid = _valid(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        offsets = _offsets(arr) if m else np.zeros(1, np.int64)
        lengths = np.diff(offsets)
        if valid is not None:
            if lengths[~valid].any():  # null slots backed by bytes: drop them
                arr = pc.fill_null(arr, pa.scalar(b"" if "binary" in str(t) else "", t))
                offsets = _offsets(arr)
                lengths = np.diff(offsets)
            lengths = np.where(valid, lengths, -1)
        if lengths.size and lengths.max() >= 2**31:
            raise ValueError("a single value of 2 GiB or more cannot be hashed")
        data = arr.buffers()[2] if m else pa.py_buffer(b"")
        return [("<i4", lengths)], [(offsets, data if data is not None else pa.py_buffer(b""))]
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        return _encode_scalar(arr, valid), []
    if pa.types.is_struct(t):
        flag = np.ones(m, np.uint8) if valid is None else valid.astype(np.uint8)
        fields, streams = [("u1", flag)], []
        # flatten() propagates the struct's nulls into its fields, so hidden field values never count.
        for child in arr.flatten():
            f, s = _encode(child)
            fields += f
            streams += s
        return fields, streams
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        counts = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        rows = np.zeros(m + 1, np.int64)
        np.cumsum(counts, out=rows[1:])
        # flatten() skips the elements of null lists and honours slicing.
        child_fields, child_streams = _encode(arr.flatten())
        header, width = _pack(child_fields, int(rows[-1]))
        streams = [(rows * width, header)] + [(offsets[rows], buf) for offsets, buf in child_streams]
        return [("<i4", counts if valid is None else np.where(valid, counts, -1))], streams
    raise TypeError(f"no canonical encoding for Arrow type {t}")


def _encode_scalar(arr: pa.Array, valid: np.ndarray | None):
    t = arr.type
    m = len(arr)
    if pa.types.is_null(t):
        return []
    if pa.types.is_boolean(t):
        values = arr.to_numpy(zero_copy_only=False)
        codes = np.asarray(values == True, np.uint8)  # noqa: E712 (object arrays when nulls)
        return [("u1", codes if valid is None else np.where(valid, codes, 2).astype(np.uint8))]
    if pa.types.is_floating(t):
        values = pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        bits = values.view("<u8")
        nan = np.isnan(values)
        if nan.any():
            bits = np.where(nan, _CANONICAL_NAN, bits)
        dtype = "<u8"
    else:
        unsigned = pa.types.is_unsigned_integer(t)
        target = pa.uint64() if unsigned else pa.int64()
        bits = pc.fill_null(arr.cast(target), 0).to_numpy(zero_copy_only=False)
        dtype = "<u8" if unsigned else "<i8"
    flag = np.ones(m, np.uint8) if valid is None else valid.astype(np.uint8)
    return [("u1", flag), (dtype, bits)]


def _pack(fields, m: int) -> tuple[pa.Buffer, int]:
    """Interleave header fields into one buffer of m fixed-width records."""
    if not fields:
        return pa.py_buffer(b""), 0
    dtype = np.dtype([(f"f{i}", d) for i, (d, _) in enumerate(fields)])  # packed: no alignment gaps
    out = np.empty(m, dtype)
    # Block by block: each field write strides over the records, and a block of records stays
    # in cache across all fields (2x faster than whole-column writes on 1M rows).
    for start in range(0, m, _PACK_BLOCK):
        block = out[start : start + _PACK_BLOCK]
        for name, (_, values) in zip(dtype.names, fields):
            block[name] = values[start : start + _PACK_BLOCK]
    return pa.py_buffer(out), dtype.itemsize


def _binary(offsets: np.ndarray, data: pa.Buffer, start: int, stop: int) -> pa.Array:
    """Rows [start, stop) of a stream as a large_binary array (zero-copy)."""
    sub = offsets[start : stop + 1]
    base = int(sub[0])
    size = int(sub[-1]) - base
    return pa.Array.from_buffers(_BIN, stop - start, [None, pa.py_buffer(sub - base), data.slice(base, size)])


def _batch_digests(batch: pa.RecordBatch) -> bytes:
    n = batch.num_rows
    fields, streams = [], []
    for name in sorted(batch.schema.names):
        f, s = _encode(batch.column(batch.schema.get_field_index(name)))
        fields += f
        streams += s
    header, width = _pack(fields, n)
    # A stream with no bytes in any row adds nothing to any row (all-null columns, empty lists).
    streams = [(np.arange(n + 1, dtype=np.int64) * width, header)] + [s for s in streams if s[0][-1] != s[0][0]]
    empty = pa.scalar(b"", _BIN)
    sha, digest = hashlib.sha256, type(hashlib.sha256()).digest
    out = []
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        parts = [_binary(offsets, data, start, stop) for offsets, data in streams]
        rows = pc.binary_join_element_wise(*parts, empty) if len(parts) > 1 else parts[0]
        # C-level maps over zero-copy memoryview slices of the joined buffer: no Python frame
        # and no bytes object per row, only the sha256 call itself.
        bounds = _offsets(rows).tolist()
        data = memoryview(rows.buffers()[2] or b"")
        slices = map(slice, bounds[:-1], bounds[1:])
        out.append(b"".join(map(digest, map(sha, map(data.__getitem__, slices)))))
    return b"".join(out)


def row_digests(table: pa.Table) -> np.ndarray:
    """sha256 digest of every row (in table order), as a numpy array of 32-byte strings.

    A row digest covers the values only; :func:`table_hash` adds the column names and types.
    """
    parts = [_batch_digests(batch) for batch in table.to_batches() if batch.num_rows]
    return np.frombuffer(b"".join(parts), dtype="S32")


def table_hash(table: pa.Table) -> str:
    """Order-independent sha256 of a table's rows."""
    digests = np.sort(row_digests(table))
    h = hashlib.sha256(table_signature(table).encode() + b"\n")
    h.update(digests.tobytes())
    return "sha256:" + h.hexdigest()


def json_hash(obj) -> str:
    """sha256 of canonical JSON (sorted keys, compact): for configs and manifests."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path) -> str:
    """Hex sha256 of a file's bytes (the manifest's per-file integrity record)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
