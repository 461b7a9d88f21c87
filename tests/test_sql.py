import json
import subprocess
import sys

import pyarrow as pa
import pytest

from helpers import msgs, pairs_table
from macpo.audit import run_audits
from macpo.errors import UserError
from macpo.sql import check_read_only, open_store, run_query
from macpo.store import Store, Subset


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", create=True)
    s.write_next("hh", {"default": Subset("pairs", pairs_table([("q1", "good", "bad"), ("q2", "same", "same"), ("q2", "same", "same")]))})
    s.write(
        "run",
        "round-1",
        {
            "student": Subset("pairs", pairs_table([("q1", "a longer answer", "no")], agent="student", round_=1)),
            "teacher-0": Subset("pairs", pairs_table([("q3", "x", "")], agent="teacher-0", round_=1)),
        },
    )
    s.write(
        "data",
        "v1",
        {"test": Subset("prompts", pa.table({"prompt_id": ["t1", "t2"], "prompt": [msgs("user", "q3"), msgs("user", "zzz")], "split": ["test", "test"]}))},
    )
    return s


def sql(store, q):
    return run_query(open_store(str(store.root)), q)[-1]


def test_views_and_flat_text(store):
    cols, rows = sql(store, "SELECT dataset, version, subset, prompt_text, chosen_text FROM pairs ORDER BY dataset, subset, chosen_text")
    assert ("hh", "v1", "default", "user: q1", "good") in rows
    assert sql(store, "SELECT count(*) FROM pairs")[1] == [(5,)]
    cols, rows = sql(store, "SELECT dataset, version, n_rows FROM datasets ORDER BY dataset")
    assert rows == [("data", "v1", 2), ("hh", "v1", 3), ("run", "round-1", 2)]
    assert sql(store, "SELECT round, n_rows FROM rounds")[1] == [(1, 2)]
    assert sql(store, "SELECT count(*) FROM candidates")[1] == [(0,)]  # empty kinds still have views
    assert sql(store, "SELECT subset, kind, n_rows FROM subsets WHERE dataset='run' ORDER BY subset")[1] == [
        ("student", "pairs", 1),
        ("teacher-0", "pairs", 1),
    ]


@pytest.mark.parametrize(
    "query",
    [
        "DROP VIEW pairs",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/macpo-should-not-exist.csv'",
        "INSTALL httpfs",
        "ATTACH '/tmp/x.db' AS x",
        "SELECT 1; DROP VIEW pairs",
        "INSERT INTO pairs SELECT * FROM pairs",
        "SET enable_external_access=true",
    ],
)
def test_writes_are_refused(store, query):
    con = open_store(str(store.root))
    with pytest.raises(UserError, match="refused"):
        check_read_only(con, query)


def test_sandbox_blocks_reading_outside_store(store):
    with pytest.raises(UserError, match="Permission"):
        sql(store, "SELECT * FROM read_csv('/etc/passwd')")


def test_cli_formats_and_exit_codes(store):
    base = [sys.executable, "-m", "macpo.cli", "sql", "--store", str(store.root)]
    r = subprocess.run([*base, "SELECT count(*) AS n FROM pairs", "--format", "csv"], capture_output=True, text=True)
    assert r.stdout.splitlines() == ["n", "5"]
    r = subprocess.run([*base, "SELECT dataset FROM datasets ORDER BY 1", "--format", "json"], capture_output=True, text=True)
    assert [d["dataset"] for d in json.loads(r.stdout)] == ["data", "hh", "run"]
    for q in ["DROP VIEW pairs", "COPY (SELECT 1) TO 'x.csv'", "INSTALL httpfs", "ATTACH 'x.db'", "CREATE TABLE t (a INT)"]:
        r = subprocess.run([*base, q], capture_output=True, text=True)
        assert r.returncode == 2, q
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_audits_find_the_planted_problems(store):
    results = {r.name: r for r in run_audits(store)}  # the store-wide line of each audit is its last
    assert results["chosen-equals-rejected"].count == 2 and results["chosen-equals-rejected"].verdict == "fail"
    assert results["duplicate-pairs"].count == 1 and results["duplicate-pairs"].verdict == "warn"
    assert results["empty-responses"].count == 1 and results["empty-responses"].verdict == "fail"
    assert results["prompt-leakage"].count == 1 and results["prompt-leakage"].verdict == "fail"  # q3 is a test prompt
    assert results["dataset-overlap"].count == 2  # q1 in hh+run, q3 in data+run
    assert results["counts"].count == 5 and results["counts"].scope == "all"
    run_counts = next(r for r in run_audits(store, names=["counts"]) if r.scope == "run/round-1")
    assert run_counts.count == 2 and "pairs round 1 student: 1" in run_counts.detail
    # 3 of the 5 pairs have chosen longer than rejected
    assert results["length-bias"].count == 3 and results["length-bias"].verdict == "ok"
    only = run_audits(store, dataset="hh", names=["chosen-equals-rejected"])
    assert [(r.name, r.count) for r in only] == [("chosen-equals-rejected", 2)]


def test_user_audit_files_are_picked_up(store, tmp_path):
    d = tmp_path / "audits"
    d.mkdir()
    (d / "short-chosen.sql").write_text(
        "-- chosen shorter than 3 characters\nSELECT count(*) AS count, 'warn' AS verdict, '' AS detail FROM pairs WHERE length(chosen_text) < 3\n"
    )
    r = run_audits(store, names=["short-chosen"], extra_dirs=[d])
    assert r[0].count == 1 and r[0].description == "chosen shorter than 3 characters"
    with pytest.raises(UserError, match="unknown audit"):
        run_audits(store, names=["nope"])
    (d / "evil.sql").write_text("DROP VIEW pairs")
    with pytest.raises(UserError, match="refused"):
        run_audits(store, names=["evil"], extra_dirs=[d])


def test_status_cli(store):
    r = subprocess.run([sys.executable, "-m", "macpo.cli", "status", "--store", str(store.root), "--json"], capture_output=True, text=True)
    info = json.loads(r.stdout)
    names = [d["name"] for d in info["datasets"]]
    assert names == ["data", "hh", "run"]
    run = info["datasets"][2]["versions"][0]
    assert run["version"] == "round-1" and run["subsets"]["student"]["rows"] == 1
    assert run["content_hash"] == store.manifest("run", "round-1")["content_hash"]
    r = subprocess.run([sys.executable, "-m", "macpo.cli", "audit", "--store", str(store.root), "counts"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].split() == ["counts", "INFO", "all", "count=5", "5", "training", "rows", "in",
                                                                       "2", "dataset", "versions"]
