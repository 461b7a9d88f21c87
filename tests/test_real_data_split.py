"""The real-data split of a run (`macpo eval --prepare` without the sandbox): fractions, caps, order."""

import pytest
from helpers import pairs_table

from macpo import config as config_mod
from macpo.errors import UserError
from macpo.eval.cli import split_offline_data
from macpo.store import Store, Subset


def _source(tmp_path, rows):
    src = Store(tmp_path / "src", create=True)
    src.write("hh", "v1", {"default": Subset("pairs", rows)})
    return tmp_path / "src"


def _split(tmp_path, src, out, **data):
    cfg = config_mod.from_dict({"name": "r", "out": str(tmp_path / out), "K": 1, "T": 1, "teachers": ["t"], "student": "s",
                                "data": {"store": str(src), "dataset": "hh", **data}})
    store = Store(tmp_path / out / "store", create=True)
    split_offline_data(cfg, store, "r-data")
    return {s: store.read("r-data", "v1", s) for s in ("dw", "q", "test")}


def test_max_rows_caps_each_split_by_prompt_hash_whatever_the_row_order(tmp_path):
    rows = pairs_table([(f"question {i}", f"good {i}", f"bad {i}") for i in range(200)])
    src = _source(tmp_path, rows)
    full = _split(tmp_path, src, "full")
    capped = _split(tmp_path, src, "capped", max_rows={"dw": 10, "q": 7, "test": 3})
    assert [capped[s].num_rows for s in ("dw", "q", "test")] == [10, 7, 3]
    for s in ("dw", "q", "test"):  # a cap keeps a subset of the uncapped split
        assert set(capped[s].column("prompt_id").to_pylist()) <= set(full[s].column("prompt_id").to_pylist())
    shuffled = _source(tmp_path / "shuffled", rows.take(list(reversed(range(rows.num_rows)))))
    again = _split(tmp_path, shuffled, "again", max_rows={"dw": 10, "q": 7, "test": 3})
    for s in ("dw", "q", "test"):
        assert sorted(again[s].column("prompt_id").to_pylist()) == sorted(capped[s].column("prompt_id").to_pylist())


@pytest.mark.parametrize("bad", [{"q": 0}, {"train": 5}, {"q": "64"}, [64], {"q": True}])
def test_bad_max_rows_is_a_user_error(tmp_path, bad):
    src = _source(tmp_path, pairs_table([("a", "b", "c")]))
    with pytest.raises(UserError, match="data.max_rows"):
        _split(tmp_path, src, "x", max_rows=bad)
