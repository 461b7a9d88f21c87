"""Stock TRL trains on what macpo writes (issue 22, part 1).

A script with no macpo import loads a run's subsets the way TRL's documentation shows
(``load_dataset("parquet", data_files=...)`` and ``load_dataset(repo, config, revision="round-N")``
from the loopback Hub) and trains a few steps of stock ``trl.DPOTrainer`` on every ``pairs``
subset and stock ``trl.SFTTrainer`` on every ``sft`` subset of the run's rounds. Each job must end
with finite losses and changed parameters. Before this, every pairs row carried all-null
``ref_chosen_logps`` / ``ref_rejected_logps`` columns and DPOTrainer stopped with "Could not
infer dtype of NoneType".
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from helpers import pairs_table
from hub_server import FakeHub
from macpo.store import Store, Subset

TOKEN = "hf_stockTRLfake_0d1e2f"

# Runs in its own interpreter; `macpo` must not be imported, not even indirectly.
STOCK_SCRIPT = r'''
import json, math, sys
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

spec = json.loads(sys.argv[1])
results = []
for job in spec["jobs"]:
    if "files" in job:
        ds = load_dataset("parquet", data_files=job["files"], split="train")
    else:
        ds = load_dataset(job["repo"], job["config"], revision=job["revision"], split="train")
    if job.get("drop_ref"):  # the dataset card's recipe for making TRL ignore stored reference log-probs
        ds = ds.remove_columns([c for c in ds.column_names if c.startswith("ref_")])
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    before = [p.detach().clone() for p in model.parameters()]
    common = dict(output_dir=spec["out"], max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
                  logging_steps=1, save_strategy="no", use_cpu=True, max_length=64, disable_tqdm=True)
    if job["trainer"] == "dpo":
        args = DPOConfig(**common, precompute_ref_log_probs=job.get("precompute", False))
        trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=ds, processing_class=tok)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    results.append({"name": job["name"], "columns": ds.column_names, "losses": losses, "changed": changed})
results.append({"macpo_imported": any(m == "macpo" or m.startswith("macpo.") for m in sys.modules)})
print("RESULTS " + json.dumps(results))
'''


def run_stock(tmp_path: Path, model: Path, jobs: list[dict], env: dict | None = None) -> list[dict]:
    script = tmp_path / "stock_trl.py"
    script.write_text(STOCK_SCRIPT)
    spec = {"model": str(model), "out": str(tmp_path / "trl-out"), "jobs": jobs}
    # Run from tmp_path, so the repo folder is not on sys.path either.
    r = subprocess.run([sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True, cwd=tmp_path,
                       env=env or dict(os.environ, OMP_NUM_THREADS="1"), timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    assert results.pop() == {"macpo_imported": False}
    for res in results:
        assert res["losses"] and all(math.isfinite(x) for x in res["losses"]), res
        assert res["changed"], f"{res['name']}: parameters did not change"
    return results


def _subsets(store: Path, dataset: str) -> dict[tuple[str, str], tuple[str, list[str]]]:
    """(version, subset) -> (kind, parquet files) of every round-N version of ``dataset``."""
    s = Store(store)
    out = {}
    for version in s.versions(dataset):
        if not version.startswith("round-") or not version[len("round-"):].isdigit():
            continue
        for subset, entry in s.manifest(dataset, version)["subsets"].items():
            if entry["kind"] in ("pairs", "sft"):
                out[(version, subset)] = (entry["kind"], [str(p) for p in s.files(dataset, version, subset)])
    return out


def _env(hub: FakeHub, tmp_path: Path) -> dict:
    return dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0",
                HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=TOKEN, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def test_stock_trl_trains_on_every_subset_of_a_run_and_on_hub_rounds(ci_run, tiny_model_dir, tmp_path):
    out, _ = ci_run
    store = out / "store"
    name = next(n for n in Store(store).datasets() if not n.endswith(("-data", "-evals")))
    subsets = _subsets(store, name)
    kinds = {kind for kind, _ in subsets.values()}
    assert kinds == {"pairs", "sft"} and ("round-1", "student") in subsets, sorted(subsets)
    for (version, subset), (kind, files) in subsets.items():  # what TRL's collator would trip over
        table = pq.read_table(files)
        empty = [c for c in table.column_names if c.startswith("ref_") and table.column(c).null_count == table.num_rows]
        assert not empty, f"{version}/{subset}: all-null {empty}"

    jobs = [{"name": f"{v}/{s}", "trainer": "dpo" if kind == "pairs" else "sft", "files": files}
            for (v, s), (kind, files) in sorted(subsets.items())]
    with FakeHub(tmp_path / "hub", token=TOKEN) as hub:
        env = _env(hub, tmp_path)
        for n in (0, 1):
            push = subprocess.run([sys.executable, "-m", "macpo.cli", "push", "--store", str(store), "--dataset", name,
                                   "--round", str(n), "--repo", "org/run", "--no-audit"],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert push.returncode == 0, push.stderr[-2000:]
        jobs += [{"name": "hub round-1-student", "trainer": "dpo", "repo": "org/run", "config": "round-1-student", "revision": "round-1"},
                 {"name": "hub round-0-weak-labels", "trainer": "sft", "repo": "org/run", "config": "round-0-weak-labels",
                  "revision": "round-0"}]
        results = run_stock(tmp_path, tiny_model_dir, jobs, env=env)
    assert [r["name"] for r in results] == [j["name"] for j in jobs]
    hub_pairs = next(r for r in results if r["name"] == "hub round-1-student")
    assert {"prompt", "chosen", "rejected"} <= set(hub_pairs["columns"])
    assert not [c for c in hub_pairs["columns"] if c.startswith("ref_")]


def test_stored_reference_logps_and_the_cards_recipe(tmp_path, tiny_model_dir):
    """With values, the reference columns are written; stock DPOTrainer trains with them (unused), and
    after the card's remove_columns recipe also with precompute_ref_log_probs=True (which fails on
    the duplicated columns otherwise)."""
    rows = [(f"question {i}", f"a good answer {i}", f"no {i}") for i in range(8)]
    store = Store(tmp_path / "store", create=True)
    store.write("run", "round-1", {
        "student": Subset("pairs", pairs_table(rows, agent="student", round_=1, ref_chosen_logps=[-5.0] * 8,
                                               ref_rejected_logps=[-3.0] * 8)),
        "plain": Subset("pairs", pairs_table(rows, agent="teacher-0", round_=1, ref_chosen_logps=[None] * 8)),
    })
    with_ref = [str(p) for p in store.files("run", "round-1", "student")]
    plain = [str(p) for p in store.files("run", "round-1", "plain")]
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(pq.read_schema(with_ref[0]).names)
    assert not [c for c in pq.read_schema(plain[0]).names if c.startswith("ref_")]
    results = run_stock(tmp_path, tiny_model_dir, [
        {"name": "with-ref", "trainer": "dpo", "files": with_ref},
        {"name": "recipe", "trainer": "dpo", "files": with_ref, "drop_ref": True, "precompute": True},
        {"name": "plain-precompute", "trainer": "dpo", "files": plain, "precompute": True},
    ])
    assert "ref_chosen_logps" in results[0]["columns"] and "ref_chosen_logps" not in results[1]["columns"]


def test_versions_written_with_all_null_reference_columns_still_verify_and_read(tmp_path, monkeypatch):
    """Versions written before the reference columns became sparse hold them all-null, and their
    content hash covers them: reads keep them, so status --verify, SQL and training still agree."""
    import macpo.schema as schema
    from macpo.sql import open_store, run_query
    from macpo.trainer.data import to_trl_dataset

    store = Store(tmp_path / "store", create=True)
    monkeypatch.setattr(schema, "SPARSE", {})  # as macpo wrote every round before
    old = store.write("run", "round-1", {"student": Subset("pairs", pairs_table([("q", "a", "b")], agent="student", round_=1))})
    monkeypatch.undo()
    assert "ref_chosen_logps" in pq.read_schema(store.files("run", "round-1", "student")[0]).names
    assert store.verify("run", "round-1") == []
    table = store.read("run", "round-1", "student")
    assert table.column("ref_chosen_logps").null_count == 1
    prepared = to_trl_dataset(table, "dpo", "old round")
    assert not prepared.stored_ref and not [c for c in prepared.dataset.column_names if c.startswith("ref_")]
    # Written again today, the same rows leave the empty columns out (and hash without them).
    new = store.write("run", "round-2", {"student": Subset("pairs", pairs_table([("q", "a", "b")], agent="student", round_=1))})
    assert new.content_hash != old.content_hash
    assert "ref_chosen_logps" not in pq.read_schema(store.files("run", "round-2", "student")[0]).names
    rows = run_query(open_store(str(store.root)), "SELECT version, ref_chosen_logps, axis FROM pairs ORDER BY version")[-1][1]
    assert rows == [("round-1", None, None), ("round-2", None, None)]
