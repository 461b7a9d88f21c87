"""Trainer stage as a process: `macpo train` user errors, real HH data imported with
`macpo import`, and a real 2-process `accelerate launch` on CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_trainer import make_cfg, store_dir  # noqa: F401  (module fixture reused here)

PY = sys.executable
LOG2 = math.log(2.0)


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # One torch thread per process: this machine's 2 cores are shared, and 2 spinning threads
    # per process are many times slower there than one.
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout, env=env)


def macpo(*args: str, **kw) -> subprocess.CompletedProcess:
    return run("-m", "macpo.cli", *args, **kw)


def test_help():
    proc = macpo("train", "--help")
    assert proc.returncode == 0
    for flag in ("--data", "--subset", "--loss", "--nll-weight", "--alpha", "--ref", "--adapter", "--merge", "--launcher"):
        assert flag in proc.stdout


@pytest.fixture
def base_args(store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    return ["--data", str(store_dir), "--dataset", "toy", "--subset", "default", "--model", str(tiny_model_dir),
            "--loss", "dpo", "--max-steps", "1", "--out", str(tmp_path / "out")]


def _replace(args: list[str], flag: str, value: str | None) -> list[str]:
    args = list(args)
    i = args.index(flag)
    if value is None:
        del args[i:i + 2]
    else:
        args[i + 1] = value
    return args


@pytest.mark.parametrize(
    "case, change, message",
    [
        ("unknown subset", ("--subset", "nope"), "has no subset 'nope'"),
        ("missing subset", ("--subset", None), "missing required option(s): --subset"),
        ("unknown loss", ("--loss", "ppo"), "invalid choice: 'ppo'"),
        ("unknown dataset", ("--dataset", "other"), "no dataset 'other'"),
        ("model folder without config", ("--model", "EMPTY_DIR"), "not a model folder (no config.json)"),
        ("model that does not exist", ("--model", "nobody/no-such-model"), "cannot load a tokenizer"),
    ],
)
def test_user_errors_exit_2_with_one_line(case, change, message, base_args, tmp_path):
    flag, value = change
    if value == "EMPTY_DIR":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "weights.txt").write_text("not a model")
        value = str(tmp_path / "empty")
    proc = macpo("train", *_replace(base_args, flag, value))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_module_entry_point_reports_user_errors(base_args):
    proc = run("-m", "macpo.trainer", *_replace(base_args, "--subset", "nope"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no subset 'nope'" in proc.stderr


# ---- real data: the shared HH-RLHF file through `macpo import` ------------------------------
@pytest.fixture(scope="module")
def hh_store(shared_hh, tmp_path_factory) -> Path:
    if importlib.util.find_spec("macpo.builder.importers") is None:
        pytest.skip("macpo.builder.importers (the `macpo import` command) is not in this checkout yet")
    store = tmp_path_factory.mktemp("hh") / "store"
    proc = macpo("import", str(shared_hh), "--format", "hh-rlhf", "--store", str(store), "--name", "hh")
    assert proc.returncode == 0, proc.stderr
    return store


HH_COMMAND = ["--dataset", "hh", "--subset", "default", "--loss", "dpo-nll", "--max-steps", "8", "--batch-size", "4",
              "--lr", "1e-3"]


def test_hh_real_data_issue_command(hh_store, tiny_model_dir, tmp_path):
    """The issue's command verbatim, on all 2,312 imported pairs."""
    out = tmp_path / "O"
    proc = macpo("train", "--data", str(hh_store), *HH_COMMAND, "--model", str(tiny_model_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((hh_store / "hh" / "v1" / "manifest.json").read_text())
    assert metrics["steps"] == 8 and len(metrics["losses"]) == 8
    assert all(math.isfinite(x) for x in metrics["losses"])
    # Step 1 runs before any update: DPO term exactly log 2, plus γ · NLL of a near-uniform
    # random model over its 400-token vocabulary (NLL ≈ log 400).
    assert metrics["losses"][0] == pytest.approx(LOG2 + 0.2 * math.log(400), abs=0.02)
    assert (metrics["dataset"]["dataset"], metrics["dataset"]["version"]) == ("hh", "v1")
    assert metrics["dataset"]["content_hash"] == manifest["content_hash"]
    assert metrics["rows"] > 2000  # TRL drops only rows whose prompt alone exceeds --max-length 1024
    assert (out / "adapter_model.safetensors").is_file() and manifest["content_hash"] in (out / "README.md").read_text()
    # Falling losses are asserted on the next test: across 8 *different* random HH batches, this
    # random tiny model with LoRA r=8 at lr 1e-3 moves the loss less than batch-to-batch variation.


def test_hh_real_data_loss_falls(hh_store, tiny_model_dir, tmp_path):
    """The same flags on the first 4 imported HH pairs, seen at every step (--max-length 768 so all
    4 fit, in-process to save a start-up): the objective falls at every step."""
    from macpo.trainer.train import run_training
    from macpo.trainer.train_config import parse_args

    cfg = parse_args(["--data", str(hh_store), *HH_COMMAND, "--model", str(tiny_model_dir), "--out", str(tmp_path / "O"),
                      "--max-samples", "4", "--max-length", "768", "--threads", "1"])
    metrics = run_training(cfg)
    losses = metrics["losses"]
    assert metrics["rows"] == 4 and len(losses) == 8
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


# ---- several processes ------------------------------------------------------------------------
def test_accelerate_two_cpu_processes_match_one(store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    """`macpo train --launcher accelerate --num-processes 2` = 2 gloo DDP processes of batch 2, and
    matches one process of batch 4 step for step (same global batches over one epoch)."""
    from macpo.trainer.train import run_training

    common = ["--data", str(store_dir), "--dataset", "toy", "--version", "v1", "--subset", "default",
              "--model", str(tiny_model_dir), "--loss", "spac", "--max-steps", "2", "--max-samples", "8",
              "--lr", "1e-2", "--lr-scheduler", "constant"]
    proc = macpo("train", *common, "--batch-size", "2", "--out", str(tmp_path / "ddp"),
                 "--launcher", "accelerate", "--num-processes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and ddp["steps"] == 2 and ddp["epochs"] == 1.0

    single = run_training(make_cfg(store_dir, tiny_model_dir, tmp_path / "single", loss="spac", max_steps=2,
                                   max_samples=8, batch_size=4, lr=1e-2, lr_scheduler="constant"))
    assert single["world_size"] == 1
    assert ddp["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert (tmp_path / "ddp" / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".*partial*"))


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "trainer" / "accelerate_configs"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type for p in sorted(folder.glob("*.yaml"))}
    assert {k: str(v).split(".")[-1] for k, v in kinds.items()} == {
        "ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED", "multi_node_ddp": "MULTI_GPU"}


def test_two_cpu_processes_have_one_main_process_and_a_real_barrier(tmp_path):
    """What run_training relies on for its output folder: under the launcher `macpo train
    --launcher accelerate` builds, exactly one rank is main and wait_for_everyone waits."""
    script = tmp_path / "ranks.py"
    # Rank 1 announces it reached the barrier; rank 0 then writes a marker and only afterwards
    # enters the barrier. Rank 1 finds the marker after the barrier only if the barrier waited.
    script.write_text(
        "import json, os, pathlib, time\n"
        "from macpo.trainer.train import process_state\n"
        "from macpo.trainer.train_config import TrainConfig\n"
        f"folder = pathlib.Path({str(tmp_path)!r})\n"
        "state = process_state(TrainConfig(data='x', model='x', out='x'))\n"
        "if state.is_main_process:\n"
        "    deadline = time.time() + 120\n"
        "    while not (folder / 'arrived').exists() and time.time() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    time.sleep(0.5)\n"
        "    (folder / 'marker').touch()\n"
        "else:\n"
        "    (folder / 'arrived').touch()\n"
        "state.wait_for_everyone()\n"
        "(folder / f\"rank-{os.environ['RANK']}.json\").write_text(json.dumps({'rank': os.environ['RANK'],\n"
        "    'main': state.is_main_process, 'n': state.num_processes, 'marker': (folder / 'marker').exists()}))\n"
    )
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # One file per rank: the two ranks' stdout lines can interleave in one pipe.
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["rank"], r["main"], r["n"]) for r in ranks] == [("0", True, 2), ("1", False, 2)]
    assert ranks[1]["marker"]  # rank 1 waited at the barrier for rank 0
