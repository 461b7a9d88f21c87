"""Audits on a store of several foreign datasets (issue 22, part 4): one line per dataset version,
the store-wide line last, n/a (with the reason) when nothing was checked, overlap with counts."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

from helpers import msgs, pairs_table
from macpo.audit import run_audits
from macpo.store import Store, Subset


def audit(store, *args):
    r = subprocess.run([sys.executable, "-m", "macpo.cli", "audit", "--store", str(store.root), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", create=True)
    # "verbose": chosen always longer (100%); "fair": chosen longer in half. Pooled: 30 of 50 = 60%, inside 35-65%.
    s.write_next("verbose", {"default": Subset("pairs", pairs_table(
        [(f"v{i}", f"a long and detailed answer {i}", f"no {i}") for i in range(10)]))})
    s.write_next("fair", {"default": Subset("pairs", pairs_table(
        [(f"f{i}", f"a long and detailed answer {i}", f"no {i}") if i % 2 else (f"f{i}", f"ok {i}", f"a long and wordy reply {i}")
         for i in range(40)]))})
    return s


def test_length_bias_flags_the_biased_dataset_that_the_pool_hides(store):
    lines = [r for r in run_audits(store, names=["length-bias"])]
    assert [(r.scope, r.verdict, r.count) for r in lines] == [("fair/v1", "ok", 20), ("verbose/v1", "warn", 10), ("all", "ok", 30)]
    assert lines[1].detail == "chosen longer in 100.0% of 10 pairs" and lines[2].detail == "chosen longer in 60.0% of 50 pairs"
    out = audit(store, "length-bias").splitlines()
    assert [line.split()[:4] for line in out] == [["length-bias", "OK", "fair/v1", "count=20"],
                                                  ["length-bias", "WARN", "verbose/v1", "count=10"],
                                                  ["length-bias", "OK", "all", "count=30"]]
    assert [r["scope"] for r in json.loads(audit(store, "length-bias", "--json"))] == ["fair/v1", "verbose/v1", "all"]


def test_an_audit_that_checked_nothing_says_na_with_the_reason(store, tmp_path):
    by_name = {r.name: r for r in run_audits(store)}
    leak = by_name["prompt-leakage"]
    assert (leak.scope, leak.verdict, leak.count) == ("all", "n/a", 0) and "no prompts with split 'test'" in leak.detail
    assert "N/A" in audit(store, "prompt-leakage") and "OK" not in audit(store, "prompt-leakage")
    empty = Store(tmp_path / "empty", create=True)
    empty.write_next("prompts-only", {"p": Subset("prompts", pa.table({"prompt_id": ["a"], "prompt": [msgs("user", "q")]}))})
    for r in run_audits(empty):
        assert r.verdict == "n/a" and r.detail, r
    # With test prompts there is something to check: one line per training version, then the store.
    store.write_next("heldout", {"test": Subset("prompts", pa.table(
        {"prompt_id": ["t1", "t2"], "prompt": [msgs("user", "v3"), msgs("user", "unseen")], "split": ["test", "test"]}))})
    leak = [(r.scope, r.verdict, r.count) for r in run_audits(store, names=["prompt-leakage"])]
    assert leak == [("fair/v1", "ok", 0), ("verbose/v1", "fail", 1), ("all", "fail", 1)]


def test_overlap_names_its_counts(store):
    store.write_next("reuse", {"default": Subset("pairs", pairs_table([("v1", "a", "b"), ("v2", "a", "b"), ("f0", "a", "b"), ("new", "a", "b")]))})
    lines = {r.scope: r for r in run_audits(store, names=["dataset-overlap"])}
    assert list(lines) == ["fair/v1", "reuse/v1", "verbose/v1", "all"]
    assert lines["reuse/v1"].count == 3 and lines["reuse/v1"].detail == "3 of 4 prompts also in another dataset (fair 1, verbose 2)"
    assert lines["verbose/v1"].count == 2 and lines["fair/v1"].count == 1
    assert lines["all"].count == 3 and lines["all"].detail == "3 prompts in more than one dataset (fair+reuse: 1, reuse+verbose: 2)"


def test_one_version_in_scope_prints_one_line(store):
    only = run_audits(store, dataset="verbose", names=["length-bias", "counts"])
    assert [(r.name, r.scope, r.verdict) for r in only] == [("length-bias", "verbose/v1", "warn"), ("counts", "verbose/v1", "info")]
