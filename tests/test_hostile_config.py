"""Hostile configs and output paths (issue 23): each is one line on stderr, exit 2, quickly, and
nothing written. Every input is built here; nothing runs a model except the train --overwrite
check, which trains one step of the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_line_error, pairs_table

REPO_ROOT = Path(__file__).resolve().parents[1]
CI = REPO_ROOT / "eval" / "configs" / "ci.yaml"
MACPO = [sys.executable, "-m", "macpo.cli"]


def run(*args, timeout=60):
    # A refused config answers in a second or two; today's alias bombs and T: 1e8 ran for minutes.
    return subprocess.run([*MACPO, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from macpo.store import Store, Subset

    root = tmp_path_factory.mktemp("data") / "store"
    Store(root, create=True).write("hh", "v1", {"default": Subset("pairs", pairs_table(
        [(f"question {i}", f"good answer {i}", f"bad answer {i}") for i in range(8)]))})
    return root


# ---- YAML: aliases, encodings, things that are not files ------------------------------------
BOMB = "\n".join(["world:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
                 + [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]) + "\n"


@pytest.mark.parametrize("name, text", [
    ("bomb", BOMB),  # 10^9 strings once expanded
    ("recursive-mapping", "world: &w {a: *w}\n"),
    ("recursive-list", "world: &w [1, *w]\n"),
    ("merge-key", "base: &b {T: 1}\nsampling:\n  <<: *b\n"),
])
def test_yaml_aliases_are_refused(name, text, tmp_path):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(text)
    for command in (["run", cfg, "--out", tmp_path / "out"], ["build", "--config", cfg, "--round", "0"],
                    ["train", "--config", cfg]):
        one_line_error(run(*command), str(cfg), "aliases are not allowed")
    assert not (tmp_path / "out").exists()


def test_a_config_that_is_not_a_file_or_not_text(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    one_line_error(run("run", bad, "--out", tmp_path / "out"), "not UTF-8", "0xe9")
    one_line_error(run("train", "--config", bad), "not UTF-8")
    for path in (tmp_path, "/dev/zero"):
        one_line_error(run("run", path, "--out", tmp_path / "out"), f"config file {path} is not a regular file")
        one_line_error(run("train", "--config", path), "is not a regular file")
    one_line_error(run("run", tmp_path / "missing.yaml"), "missing.yaml does not exist")
    huge = tmp_path / "digits.yaml"
    huge.write_text("K: " + "9" * 5000 + "\n")  # beyond Python's int() digit limit: a ValueError in PyYAML
    one_line_error(run("run", huge, "--out", tmp_path / "out"), "digits.yaml: invalid YAML")
    assert not (tmp_path / "out").exists()


# ---- values range-checked at load ----------------------------------------------------------------
@pytest.mark.parametrize("setting, field", [
    ("T=100000000", "config T:"),
    ("K=17", "config K:"),
    ("seed=-1", "config seed:"),
    ("sampling.temperature=.nan", "config sampling.temperature:"),
    ("sampling.temperature=-1", "config sampling.temperature:"),
    ("sampling.top_p=0", "config sampling.top_p:"),
    ("sampling.top_p=1.5", "config sampling.top_p:"),
    ("shard_size=0", "config shard_size:"),
    ("sampling.batch_size=0", "config sampling.batch_size:"),
    ("sampling.max_new_tokens=0", "config sampling.max_new_tokens:"),
    ("ray.num_cpus_per_worker=.nan", "config ray.num_cpus_per_worker:"),
    ("ray.num_gpus_per_worker=.nan", "config ray.num_gpus_per_worker:"),
    ("eval.batch_size=0", "config eval.batch_size:"),
    ("train.dpo.lr=.inf", "config train.dpo.lr:"),
    ("K=" + "9" * 400, "config K:"),
])
def test_out_of_range_values_are_refused_before_any_work(setting, field, tmp_path):
    out = tmp_path / "out"
    one_line_error(run("run", CI, "--out", out, "--set", setting), field)
    assert not out.exists()


def test_the_limits_are_in_the_field_help():
    text = run("run", CI, "--print-config").stdout
    for needle in ("at most 16)", "(0 to 100)", "in (0, 1]", "1 to 1,000,000)"):
        assert needle in text


def test_trainer_flags_must_be_finite():
    for flag in ("--lr", "--epochs", "--beta"):
        one_line_error(run("train", "--data", "x", "--subset", "s", "--model", "m", "--out", "o", flag, "inf"),
                       f"{flag} must be a finite number")


def test_a_300_character_name(tmp_path):
    one_line_error(run("run", CI, "--out", tmp_path / "out", "--set", "name=" + "n" * 300), "config name", "at most 128")
    assert not (tmp_path / "out").exists()
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    one_line_error(run("import", src, "--format", "trl", "--store", tmp_path / "store", "--name", "n" * 300),
                   "dataset name", "at most 128")
    assert not (tmp_path / "store").exists()


# ---- --out: never a file, never the data being read -------------------------------------------------
def test_out_is_a_file_or_below_one(store, tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    for out, needle in ((f, "is a file, not a folder"), (f / "sub", f"{f} is a file")):
        one_line_error(run("run", CI, "--out", out), needle)
        one_line_error(run("study", CI, "--seeds", "1", "--variants", "macpo", "--out", out), needle)
        one_line_error(run("train", "--data", store, "--subset", "default", "--model", "m", "--out", out, "--overwrite"),
                       needle)
    assert f.read_text() == "keep me"


def test_train_out_never_replaces_the_store_it_reads(store, tmp_path):
    before = tree(store)
    base = ["train", "--data", store, "--subset", "default", "--model", "m", "--max-steps", "1"]
    one_line_error(run(*base, "--out", store, "--overwrite"), "is the store (--data) it reads")
    one_line_error(run(*base, "--out", store.parent, "--overwrite"), "contains the store (--data)")
    one_line_error(run(*base, "--out", store / "hh" / "adapter"), "is inside the store (--data)")
    one_line_error(run(*base, "--out", tmp_path / "m2", "--model", tmp_path, "--overwrite"), "the model (--model)")
    assert tree(store) == before


def test_overwrite_replaces_only_an_earlier_train_output(store, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's")
    args = ["train", "--data", store, "--subset", "default", "--model", tiny_model_dir, "--loss", "sft",
            "--max-steps", "1", "--batch-size", "4", "--threads", "1", "--out", out]
    one_line_error(run(*args, "--overwrite"), "holds files macpo train did not write")
    assert (out / "notes.txt").read_text() == "someone else's"
    (out / "notes.txt").unlink()  # an empty folder holds nothing to lose
    assert run(*args, "--overwrite", timeout=300).returncode == 0
    assert json.loads((out / ".macpo-output").read_text()) == {"written_by": "macpo train"}
    again = run(*args, "--overwrite", timeout=300)
    assert again.returncode == 0, again.stderr
    assert (out / "metrics.json").is_file()


def _real_data_config(tmp_path: Path, store: Path, out: Path) -> Path:
    cfg = tmp_path / "real.yaml"
    cfg.write_text(json.dumps({"name": "real", "method": "spac", "K": 1, "T": 1, "student": "acme/tiny",
                               "teachers": ["acme/tiny"], "out": str(out),
                               "data": {"store": str(store), "dataset": "hh"}}))
    return cfg


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_run_and_eval_out_stay_clear_of_the_data_store(where, store, tmp_path):
    out = {"same": store, "parent": store.parent, "inside": store / "runs" / "a"}[where]
    cfg = _real_data_config(tmp_path, store, out)
    before = tree(store.parent)
    needle = {"same": "is the offline data store", "parent": "contains the offline data store",
              "inside": "is inside the offline data store"}[where]
    one_line_error(run("run", cfg), needle)
    one_line_error(run("eval", "--config", cfg, "--prepare"), needle)
    one_line_error(run("build", "--config", cfg, "--round", "0"), needle)
    assert tree(store.parent) == before and not (store / "runs").exists()


def test_run_out_with_foreign_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    one_line_error(run("run", CI, "--out", out), "holds files that macpo run did not write")
    one_line_error(run("study", CI, "--seeds", "1", "--variants", "macpo", "--out", out),
                   "holds files that macpo study did not write")
    assert tree(out) == {"report.md": b"my own report"}


# ---- run-state.json that macpo did not write ----------------------------------------------------------
@pytest.mark.parametrize("content, needle", [
    (b"{not json", "is not a macpo run state"),
    (b"[1, 2]", "is not a macpo run state"),
    (json.dumps({"steps": [{"key": "k", "status": "done"}]}).encode(), "step 0 has no name"),
    (json.dumps({"steps": "all"}).encode(), "is not a macpo run state"),
    (b'{"steps": []}\xff', "is not a macpo run state"),
])
def test_a_damaged_run_state(content, needle, tmp_path):
    from macpo.cliutil import write_marker

    out = tmp_path / "out"
    (out / "store").mkdir(parents=True)
    write_marker(out, "run")
    (out / "store" / "run-state.json").write_bytes(content)
    one_line_error(run("run", CI, "--out", out), "run-state.json", needle)
    assert sorted(p.name for p in out.iterdir()) == [".macpo-output", ".macpo-run.lock", "store"]  # no run.yaml, no logs
    # status reports the damage instead of a traceback (it is what a user runs to find out)
    r = run("status", "--store", out / "store")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "run state: run-state.json" in r.stdout and "macpo run` will refuse it" in r.stdout
    r = run("status", "--store", out / "store", "--json")
    assert r.returncode == 0 and "run-state.json" in json.loads(r.stdout)["run"]["error"]
