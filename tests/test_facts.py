"""Per-row facts (macpo/facts.py): what Store.write keeps beside a version for the audits."""

import json
import shutil

import pyarrow as pa
import pytest

from helpers import pairs_table
from macpo import facts
from macpo.audit import run_audits
from macpo.sql import open_store, run_query
from macpo.store import Store, Subset

FACT_COLUMNS = ", ".join(name for name, _ in facts.fact_expressions("pairs"))


def edge_case_pairs() -> pa.Table:
    """Rows that stress the Arrow and SQL definitions of bytes/blank alike."""
    table = pairs_table(
        [
            ("q1", "plain answer", "other"),
            ("q2", "   \n\t ", "x"),  # ASCII whitespace only: blank
            ("q3", "\u00a0", "y"),  # no-break space is not \S's whitespace in RE2: not blank
            ("q4", "", "same"),
            ("q5", "same", "same"),
            ("q6", "héllo wörld ✓", "ß"),  # multi-byte UTF-8: bytes, not characters
        ]
    )
    # Multi-message and empty message lists in `rejected`.
    rejected = table.column("rejected").to_pylist()
    rejected[0] = [{"role": "assistant", "content": "part one "}, {"role": "assistant", "content": " "}]
    rejected[1] = []
    i = table.schema.get_field_index("rejected")
    table = table.set_column(i, table.schema.field(i), pa.array(rejected, table.schema.field(i).type))
    return table


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", create=True)
    s.write("edge", "v1", {"default": Subset("pairs", edge_case_pairs())})
    return s


def rows(store, query):
    return run_query(open_store(str(store.root)), query)[-1][1]


def test_write_keeps_facts_aligned_with_the_shards(store):
    version = store.path("edge", "v1")
    stored = facts.fact_files(version, store.manifest("edge", "v1"))
    assert stored == {"default": [version / ".facts/default/train-00000-of-00001.parquet"]}
    meta = json.loads((version / ".facts/facts.json").read_text())
    assert meta["format"] == facts.FACTS_FORMAT and meta["engine"] == facts.engine()
    # The facts are outside the manifest: the published file list is the data only.
    assert store.manifest("edge", "v1")["subsets"]["default"]["files"] == ["default/train-00000-of-00001.parquet"]


def test_stored_facts_equal_the_sql_definition(store):
    """The Arrow/DuckDB computation at write time and the SQL fallback agree on every row."""
    stored = rows(store, f"SELECT pair_id, {FACT_COLUMNS} FROM pairs_facts ORDER BY pair_id")
    shutil.rmtree(store.path("edge", "v1") / ".facts")
    inline = rows(store, f"SELECT pair_id, {FACT_COLUMNS} FROM pairs_facts ORDER BY pair_id")
    assert stored == inline and len(stored) == 6
    by_id = {r[0]: dict(zip(["pair_id", *FACT_COLUMNS.split(", ")], r)) for r in stored}
    blank = {pid: (r["chosen_blank"], r["rejected_blank"]) for pid, r in by_id.items()}
    assert list(blank.values()) == [(False, False), (True, True), (False, False), (True, False), (False, False), (False, False)]
    assert [r["chosen_bytes"] for r in by_id.values()] == [12, 6, 2, 0, 4, len("héllo wörld ✓".encode())]
    assert list(by_id.values())[0]["rejected_bytes"] == len("part one ") + 1
    assert all(r["self_response_blank"] and r["self_response_bytes"] == 0 for r in by_id.values())  # null lists
    # Keys are DuckDB's hash of the message list itself.
    keys = rows(store, "SELECT pair_id, hash(chosen), hash(rejected) FROM pairs ORDER BY pair_id")
    assert [(k[1], k[2]) for k in keys] == [(r["chosen_key"], r["rejected_key"]) for r in by_id.values()]


def test_audits_agree_with_and_without_stored_facts(store):
    with_facts = [(r.name, r.count, r.verdict, r.detail) for r in run_audits(store)]
    shutil.rmtree(store.path("edge", "v1") / ".facts")
    con = open_store(str(store.root))
    # Without facts, macpo sql computes them from the text (and writes nothing).
    assert run_query(con, "SELECT count(*) FROM pairs_facts WHERE chosen_key = rejected_key")[-1][1] == [(1,)]
    assert not (store.path("edge", "v1") / ".facts").exists()
    # run_audits indexes the version once, then reads the stored facts.
    again = [(r.name, r.count, r.verdict, r.detail) for r in run_audits(store)]
    assert again == with_facts
    assert facts.fact_files(store.path("edge", "v1"), store.manifest("edge", "v1")) is not None
    results = {name: (count, verdict) for name, count, verdict, _ in again}
    assert results["chosen-equals-rejected"] == (1, "fail")
    assert results["empty-responses"] == (2, "fail")  # q2 (whitespace) and q4 (empty); not the no-break space


def test_facts_of_another_duckdb_are_ignored_and_rebuilt(store, monkeypatch):
    version = store.path("edge", "v1")
    manifest = store.manifest("edge", "v1")
    meta_path = version / ".facts/facts.json"
    meta = json.loads(meta_path.read_text())
    meta["engine"] = "duckdb 0.0.1"
    meta_path.write_text(json.dumps(meta))
    assert facts.fact_files(version, manifest) is None
    assert facts.ensure_facts(version, manifest) is True
    assert facts.fact_files(version, manifest) is not None
    assert facts.ensure_facts(version, manifest) is False  # valid ones are kept
    assert not [p for p in version.iterdir() if p.name.startswith(".facts-")]  # no temp folders left


def test_a_failed_index_leaves_nothing_and_audits_still_answer(store, monkeypatch, capsys):
    version = store.path("edge", "v1")
    shutil.rmtree(version / ".facts")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(facts, "write_facts_shard", refuse)
    results = {r.name: r.count for r in run_audits(store)}
    assert results["chosen-equals-rejected"] == 1 and results["empty-responses"] == 2
    assert "auditing from the text" in capsys.readouterr().err
    assert not [p for p in version.iterdir() if p.name.startswith(".facts")]


def test_multi_shard_versions_stay_aligned(tmp_path, monkeypatch):
    import macpo.store as store_module

    monkeypatch.setattr(store_module, "ROWS_PER_SHARD", 2)
    s = Store(tmp_path / "s", create=True)
    s.write("edge", "v1", {"default": Subset("pairs", edge_case_pairs())})
    assert len(s.files("edge", "v1", "default")) == 3
    stored = rows(s, "SELECT pair_id, chosen_key, chosen_bytes FROM pairs_facts ORDER BY pair_id")
    direct = rows(s, "SELECT pair_id, hash(chosen), strlen(chosen_text) FROM pairs ORDER BY pair_id")
    assert stored == direct
