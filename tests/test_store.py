import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import pairs_table
from macpo.errors import UserError
from macpo.hashing import table_hash
from macpo.store import Store, Subset


def _subsets(rows=None):
    rows = rows or [("q1", "good", "bad"), ("q2", "yes", "no")]
    return {"default": Subset("pairs", pairs_table(rows))}


def test_write_read_roundtrip_with_manifest(tmp_path):
    store = Store(tmp_path, create=True)
    res = store.write("run", "round-1", _subsets(), parent_hash="sha256:parent", config={"a": 1})
    assert res.created
    m = store.manifest("run", "round-1")
    assert m["content_hash"] == res.content_hash
    assert m["subsets"]["default"]["rows"] == 2
    assert m["parent_hash"] == "sha256:parent"
    assert m["config_hash"].startswith("sha256:")
    assert m["macpo_version"] and m["created_at"]
    table = store.read("run", "round-1", "default")
    assert table.column("chosen").to_pylist()[0] == [{"role": "assistant", "content": "good"}]
    # optional columns exist as nulls; sparse ones (reference log-probs) only when they hold values
    assert table.column("chosen_ppl").null_count == 2 and "ref_chosen_logps" not in table.column_names


def test_hash_independent_of_row_order_and_parquet_metadata(tmp_path):
    t = pairs_table([("a", "b", "c"), ("d", "e", "f"), ("g", "h", "i")])
    assert table_hash(t) == table_hash(t.take([2, 0, 1]))
    # Re-encoding with different writer settings does not change the content hash.
    p1, p2 = tmp_path / "1.parquet", tmp_path / "2.parquet"
    pq.write_table(t, p1, compression="snappy")
    pq.write_table(t, p2, compression="zstd", row_group_size=1)
    assert table_hash(pq.read_table(p1)) == table_hash(pq.read_table(p2))
    # ...but any value change does.
    assert table_hash(t) != table_hash(pairs_table([("a", "b", "c"), ("d", "e", "f"), ("g", "h", "j")]))


def test_hash_distinguishes_boundaries_and_nulls():
    one = pa.table({"x": ["ab", "c"], "y": ["", None]})
    two = pa.table({"x": ["a", "bc"], "y": ["", None]})
    three = pa.table({"x": ["ab", "c"], "y": [None, ""]})
    assert len({table_hash(one), table_hash(two), table_hash(three)}) == 3


def test_same_content_is_noop_and_different_content_is_refused(tmp_path):
    store = Store(tmp_path, create=True)
    first = store.write("run", "round-1", _subsets())
    again = store.write("run", "round-1", _subsets())
    assert not again.created and again.content_hash == first.content_hash
    with pytest.raises(UserError) as exc:
        store.write("run", "round-1", _subsets([("q1", "other", "bad")]))
    msg = str(exc.value)
    assert first.content_hash in msg and "refusing" in msg


def test_write_next_versions(tmp_path):
    store = Store(tmp_path, create=True)
    assert store.write_next("hh", _subsets()).version == "v1"
    same = store.write_next("hh", _subsets())
    assert (same.version, same.created) == ("v1", False)
    second = store.write_next("hh", _subsets([("x", "y", "z")]))
    assert second.version == "v2"
    assert store.manifest("hh", "v2")["parent_hash"] == store.manifest("hh", "v1")["content_hash"]
    assert store.resolve("hh") == ("hh", "v2")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path, create=True)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError):
        store.write("run", "round-1", _subsets())
    assert not store.versions("run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == []


def test_schema_validated_on_write_and_read(tmp_path):
    store = Store(tmp_path, create=True)
    bad = pairs_table([("a", "b", "c")]).drop_columns(["chosen"])
    with pytest.raises(UserError, match=r"run/round-1/default: missing required column 'chosen'"):
        store.write("run", "round-1", {"default": Subset("pairs", bad)})
    store.write("run", "round-1", _subsets())
    # Corrupt the stored file: wrong type in a column -> read names column and version.
    path = store.files("run", "round-1", "default")[0]
    t = pq.read_table(path)
    t = t.set_column(t.schema.get_field_index("round"), "round", pa.array(["x"] * t.num_rows))
    os.chmod(path, 0o644)
    pq.write_table(t, path)
    # The cheap size check sees the rewrite first...
    with pytest.raises(UserError, match=r"run/round-1 is damaged: default/train-00000-of-00001.parquet: \d+ bytes"):
        store.read("run", "round-1", "default")
    # ...and with a manifest forged to match, the schema check still names the column.
    mpath = tmp_path / "run" / "round-1" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"]["default/train-00000-of-00001.parquet"]["size"] = path.stat().st_size
    os.chmod(mpath, 0o644)
    mpath.write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"run/round-1/default: column 'round'"):
        store.read("run", "round-1", "default")


def test_unknown_things_are_user_errors(tmp_path):
    store = Store(tmp_path, create=True)
    store.write("run", "round-1", _subsets())
    with pytest.raises(UserError, match="no version 'round-9'"):
        store.resolve("run", "round-9")
    with pytest.raises(UserError, match="no dataset 'nope'"):
        store.resolve("nope")
    with pytest.raises(UserError, match="no subset 'student'"):
        store.read("run", "round-1", "student")
    with pytest.raises(UserError, match="does not exist"):
        Store(tmp_path / "missing")
    with pytest.raises(UserError, match="invalid version"):
        store.write("run", "../escape", _subsets())


def test_manifest_is_json_and_files_are_parquet(tmp_path):
    store = Store(tmp_path, create=True)
    store.write("run", "round-0", _subsets())
    m = json.loads((tmp_path / "run" / "round-0" / "manifest.json").read_text())
    for f in m["subsets"]["default"]["files"]:
        assert pq.read_metadata(tmp_path / "run" / "round-0" / f).num_rows == 2


def test_versions_sort_naturally_and_latest_is_the_last_round(tmp_path):
    from helpers import pairs_table

    from macpo.store import version_sort_key

    names = ["round-10", "round-0-teachers", "round-1", "round-0", "round-0-labels", "round-2", "v10", "v2"]
    assert sorted(names, key=version_sort_key) == [
        "round-0", "round-0-labels", "round-0-teachers", "round-1", "round-2", "round-10", "v2", "v10"
    ]
    s = Store(tmp_path / "s", create=True)
    for i, version in enumerate(["round-0-teachers", "round-0-labels", "round-0", "round-1"]):
        s.write("run", version, {"default": Subset("pairs", pairs_table([(f"q{i}", "a", "b")]))})
    # `macpo train --data STORE:run` without a version takes the latest: round-1, not a round-0 part.
    assert s.resolve("run") == ("run", "round-1")
