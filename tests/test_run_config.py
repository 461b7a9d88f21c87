"""One run configuration, honoured end to end: every training field reaches the trainer process,
SPAC is not DPO, `ref: base` is the pretrained base, pinned revisions are the weights loaded,
and every command shows the resolved config the same way."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from macpo import config as config_mod
from macpo.layout import RunLayout
from macpo.run.plan import train_job
from macpo.store import Store, Subset
from macpo.trainer.train_config import JOB_FIELDS, TrainConfig
from test_trainer import make_cfg, pairs_rows, pairs_table, store_dir  # noqa: F401  (module fixture)

REPO = Path(__file__).resolve().parents[1]
LOG2 = math.log(2.0)


def macpo(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run([sys.executable, "-m", "macpo.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ---- every TrainConfig field, from a run config to the trainer process -------------------------
# Non-default values that can all hold at once on a CPU: LoRA so `merge` applies, two accelerate
# processes so `launcher`/`num_processes`/`accelerate_config` are visible as world_size 2.
NON_DEFAULT = {
    "max_samples": 4, "merge": True, "beta": 0.2, "nll_weight": 0.3, "alpha": 0.25, "ref": "base",
    "max_steps": 2, "epochs": 2.0, "batch_size": 1, "grad_accum": 2, "lr": 2e-3, "lr_scheduler": "linear",
    "warmup_ratio": 0.25, "weight_decay": 0.125, "max_length": 256, "lora_r": 4, "lora_alpha": 19,
    "lora_dropout": 0.125, "lora_targets": ["q_proj"], "precision": "fp32", "activation_checkpointing": True,
    "threads": 1, "launcher": "accelerate", "num_processes": 2, "accelerate_config": "ACCEL", "cpu": True,
}
# Consumed by the launching process itself (the ranks run without a launcher): proven by world_size.
LAUNCH_FIELDS = ("launcher", "num_processes", "accelerate_config")


def test_the_walk_covers_every_trainconfig_field():
    stage_fields = {f.name for f in dataclasses.fields(TrainConfig)} - set(JOB_FIELDS) - {"loss"}
    assert stage_fields == set(NON_DEFAULT), "a TrainConfig field was added: give it a non-default value here"
    defaults = TrainConfig()
    for name, value in NON_DEFAULT.items():
        assert value != getattr(defaults, name), name


def test_every_trainconfig_field_reaches_the_trainer_process(tmp_path, tiny_model_dir):
    accel = tmp_path / "accelerate.yaml"
    accel.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                     "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: false\n"
                     "main_process_ip: 127.0.0.1\n")
    settings = {**NON_DEFAULT, "accelerate_config": str(accel)}
    cfg = config_mod.from_dict({"name": "walk", "out": str(tmp_path / "run"), "K": 1, "teachers": ["t"],
                                "student": str(tiny_model_dir), "train": {"dpo": settings}})
    layout = RunLayout(cfg)
    Store(layout.store_dir, create=True).write(cfg.name, "round-1", {"student": Subset("pairs", pairs_table(pairs_rows()))})
    job = train_job(cfg, layout, "dpo", agent="student", round_=1, version="round-1", subset="student", start_from=None)
    proc = subprocess.run([sys.executable, "-m", "macpo.run.trainbatch", json.dumps([job])], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = layout.model_dir("student", 1)
    received = json.loads((out / "train_config.json").read_text())  # written by rank 0 of the trainer
    metrics = json.loads((out / "metrics.json").read_text())
    for name, value in settings.items():
        if name not in LAUNCH_FIELDS:
            assert received[name] == value, f"{name}: sent {value!r}, trainer got {received[name]!r}"
    assert metrics["world_size"] == 2  # launcher=accelerate with 2 processes from the run config
    assert metrics["steps"] == 2 and metrics["loss"] == "dpo-nll"
    assert metrics["model"]["saved"] == "merged" and (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    assert metrics["reference"]["role"] == "base"


# ---- SPAC is SPAC ---------------------------------------------------------------------------
def test_spac_run_and_dpo_run_differ_from_step_one(tmp_path, tiny_model_dir, store_dir):  # noqa: F811
    from macpo.trainer.train import run_training

    spac_alpha = config_mod.from_dict({"method": "spac", "K": 0}).train["dpo"].alpha
    assert spac_alpha > 0  # the documented default (TrainConfig.alpha)
    spac = run_training(make_cfg(store_dir, tiny_model_dir, tmp_path / "spac", loss="spac", alpha=spac_alpha, max_steps=1))
    dpo = run_training(make_cfg(store_dir, tiny_model_dir, tmp_path / "dpo", loss="dpo", max_steps=1))
    # Step 1: policy == reference, so DPO is exactly log 2 and SPAC adds alpha * log 2.
    assert dpo["losses"][0] == pytest.approx(LOG2, abs=1e-5)
    assert spac["losses"][0] == pytest.approx(LOG2 * (1 + spac_alpha), abs=1e-5)


# ---- one meaning of `ref` -------------------------------------------------------------------
def _perturbed_copy(src: Path, dst: Path, delta: float) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file({k: v + delta * (i % 3 - 1) for i, (k, v) in enumerate(tensors.items())}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    return dst


def test_ref_base_is_the_pretrained_base_when_full_fine_tuning_continues(tmp_path, tiny_model_dir, store_dir):  # noqa: F811
    from macpo.trainer.modeling import weights_identity
    from macpo.trainer.train import run_training

    previous = _perturbed_copy(tiny_model_dir, tmp_path / "round-1", 0.05)  # stands in for a previous iterate
    common = dict(loss="dpo", lora_r=0, max_steps=1)
    base = run_training(make_cfg(store_dir, previous, tmp_path / "b", ref="base", ref_model=str(tiny_model_dir), **common))
    prev = run_training(make_cfg(store_dir, previous, tmp_path / "p", ref="previous", **common))
    assert prev["losses"][0] == pytest.approx(LOG2, abs=1e-5)  # reference = the start-of-round policy
    assert abs(base["losses"][0] - LOG2) > 1e-3  # reference = other weights: the base
    (ref_weights,) = base["reference"]["weights"]
    assert ref_weights["path"] == str(tiny_model_dir)
    assert ref_weights["hash"] == weights_identity(str(tiny_model_dir))["hash"] != weights_identity(str(previous))["hash"]
    assert prev["reference"]["role"] == "previous" and prev["reference"]["weights"][0]["path"] == str(previous)


# ---- pinned revisions are loaded ----------------------------------------------------------------
@pytest.fixture
def two_revision_repo(tmp_path, tiny_model_dir, monkeypatch):
    """A Hub repo `acme/tiny` in a local HF cache with two revisions whose weights differ:
    `v1` (tag) and `main`. Offline, transformers resolves revisions through refs/ as online."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    shas = {}
    for i, (rev, delta) in enumerate((("v1", 0.0), ("main", 0.5))):
        sha = f"{i + 1:040x}"
        _perturbed_copy(tiny_model_dir, repo / "snapshots" / sha, delta)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(sha)
        shas[rev] = sha
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return shas


def test_the_pinned_revision_is_the_one_loaded(two_revision_repo, tiny_model_dir, tmp_path, store_dir):  # noqa: F811
    import torch

    from macpo.builder.models import load_model
    from macpo.trainer.modeling import weights_identity
    from macpo.trainer.train import run_training

    v1, _ = load_model("acme/tiny", revision="v1")
    main, _ = load_model("acme/tiny")
    reference, _ = load_model(str(tiny_model_dir))
    name, value = next(iter(reference.state_dict().items()))
    assert torch.equal(v1.state_dict()[name], value) and not torch.equal(main.state_dict()[name], value)

    # The run passes the agent's revision to the trainer; the trainer loads and records it.
    cfg = config_mod.from_dict({"out": str(tmp_path / "run"), "K": 1, "teachers": ["t"],
                                "student": {"model": "acme/tiny", "revision": "v1"}, "train": {"dpo": {"lora_r": 8}}})
    job = train_job(cfg, RunLayout(cfg), "dpo", agent="student", round_=1, version="v1", subset="default", start_from=None)
    assert (job["model"], job["model_revision"]) == ("acme/tiny", "v1")
    job.update(data=str(store_dir), dataset="toy", max_steps=1, threads=1, out=str(tmp_path / "o"))
    from macpo.trainer.train_config import from_dict

    metrics = run_training(from_dict(job))
    (weights,) = metrics["reference"]["weights"]
    assert weights["commit"] == two_revision_repo["v1"] and weights["revision"] == "v1"
    assert weights["hash"] == weights_identity(str(tiny_model_dir))["hash"]
    assert metrics["model"]["revision"] == "v1"
    # Full fine-tuning from the pinned base: the saved weights start from v1, not main.
    assert RunLayout(cfg).model_source("student", "acme/tiny").revision == "v1"


def test_the_val_split_is_the_sandboxs_alone():
    with pytest.raises(Exception, match="eval.split: 'val' is the built-in sandbox's validation split"):
        config_mod.from_dict({"K": 1, "teachers": ["t"], "student": "s", "eval": {"split": "val"}})


def test_a_run_evaluated_on_val_never_reads_test(tmp_path):
    """Settings are chosen on `val`: every evaluated prompt is a val prompt and the report says so."""
    import pyarrow.compute as pc

    from macpo.store import Store

    out = tmp_path / "run"
    proc = macpo("run", str(REPO / "eval" / "configs" / "ci.yaml"), "--set", "method=spac", "--set", "T=0",
                 "--set", "eval.split=val", "--set", f"out={out}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    store = Store(out / "store")
    data, version = store.resolve("macpo-ci-data")
    val = set(store.read(data, version, "val").column("prompt_id").to_pylist())
    test = set(store.read(data, version, "test").column("prompt_id").to_pylist())
    evaluated = set(pc.unique(store.read("macpo-ci-evals", "round-0", "default").column("prompt_id")).to_pylist())
    assert evaluated == val and not evaluated & test
    assert "\n- evaluated on the **val** split (for choosing settings; the reported result is on `test`)\n- axes:" in (out / "report.md").read_text()
    assert "round 0 (SFT on the offline pairs' chosen side)" in proc.stdout


def test_a_revision_on_a_local_folder_is_refused(tiny_model_dir):
    with pytest.raises(Exception, match="a revision applies to Hub ids only"):
        config_mod.from_dict({"K": 1, "teachers": ["t"], "student": {"model": str(tiny_model_dir), "revision": "v1"}})


# ---- one config, shown the same way everywhere ---------------------------------------------------
def test_print_config_shows_every_field_with_its_help(tmp_path):
    proc = macpo("run", str(REPO / "eval" / "configs" / "ci.yaml"), "--print-config", "--set", "train.dpo.alpha=0.3",
                 "--set", "generation.backend=vllm")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for f in dataclasses.fields(TrainConfig):
        if f.name not in JOB_FIELDS:
            assert f"# {f.metadata['help']}" in text, f.name
    assert "alpha: 0.3" in text and "backend: vllm" in text
    assert not Path("macpo-ci").exists()  # printing runs nothing


@pytest.mark.parametrize("command", [["build", "--round", "0"], ["eval", "--round", "0"], ["run"]])
def test_bad_overrides_are_one_line_errors_in_every_command(command, tmp_path):
    config = str(REPO / "eval" / "configs" / "ci.yaml")
    args = [command[0], *([config] if command[0] == "run" else ["--config", config]), *command[1:]]
    for override, message in (("train.dpo.model=x", "set per job by the run"),
                              ("train.dpo.lr=fast", "expected a number"),
                              ("generation.backend=tpu", "generation.backend"),
                              ("negative=maybe", "negative"),
                              ("eval.split=train", "eval.split")):
        proc = macpo(*args, "--set", override, "--set", f"out={tmp_path / 'o'}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (override, proc.stderr)
    assert not (tmp_path / "o").exists()
