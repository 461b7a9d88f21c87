"""Canonical row hashing (macpo/hashing.py): layout-independence and injectivity beyond test_store.py."""

import pyarrow as pa

from helpers import pairs_table
from macpo.hashing import row_digests, table_hash
from macpo.schema import MESSAGES, conform


def test_hash_ignores_chunking_slicing_and_string_width():
    t = conform(pairs_table([(f"q{i}", f"good {i}", f"bad {i}") for i in range(50)]), "pairs", "t")
    chunked = pa.concat_tables([t.slice(0, 7), t.slice(7, 30), t.slice(37)])
    assert table_hash(chunked) == table_hash(t)
    assert table_hash(t.slice(10, 20)) == table_hash(pa.Table.from_pylist(t.slice(10, 20).to_pylist(), t.schema))
    wide = t.set_column(0, "pair_id", t.column("pair_id").cast(pa.large_string()))
    assert table_hash(wide) == table_hash(t)
    assert list(row_digests(t.take([3, 1]))) == [row_digests(t)[3], row_digests(t)[1]]


def test_hash_distinguishes_message_boundaries_roles_and_nulls():
    def one(messages):
        return table_hash(pa.table({"m": pa.array([messages], MESSAGES)}))

    variants = [
        [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}],
        [{"role": "user", "content": "abc"}],
        [{"role": "use", "content": "rabc"}],
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": None}],
        [],
        None,
    ]
    assert len({one(v) for v in variants}) == len(variants)


def test_hash_covers_column_names_and_numbers():
    base = pa.table({"a": [1, 2], "b": [0.5, None]})
    assert table_hash(base) != table_hash(base.rename_columns(["a", "c"]))
    assert table_hash(base) != table_hash(pa.table({"a": [1, 2], "b": [0.5, 0.0]}))
    assert table_hash(base) == table_hash(pa.table({"a": pa.array([1, 2], pa.int32()), "b": [0.5, None]}))
    assert table_hash(pa.table({"x": [float("nan")]})) == table_hash(pa.table({"x": [-float("nan")]}))


def test_null_slots_backed_by_bytes_hash_like_plain_nulls():
    # A null string whose offsets still span bytes (legal Arrow) must hash like any null.
    data = pa.py_buffer(b"abXYZ")
    offsets = pa.py_buffer(pa.array([0, 2, 5], pa.int32()).buffers()[1])
    validity = pa.py_buffer(bytes([0b01]))
    odd = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, data])
    assert odd.to_pylist() == ["ab", None]
    assert table_hash(pa.table({"s": odd})) == table_hash(pa.table({"s": ["ab", None]}))
