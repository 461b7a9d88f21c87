"""Training across machines with accelerate: trainer/accelerate_configs/multi_node_ddp.yaml run as
2 "machines" on this host, one `accelerate launch` per --machine_rank, meeting at 127.0.0.1.

Each machine gets one CPU process (gloo), so the launch is the real multi-node path (torchrun
with nnodes=2, a node rank per launcher, a static rendezvous at the main machine) at the size
of this 2-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_trainer import make_cfg, store_dir  # noqa: F401  (module fixture reused here)

CONFIG = Path(__file__).resolve().parents[1] / "trainer" / "accelerate_configs" / "multi_node_ddp.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_machines(target: list[str], timeout: int = 300) -> list[subprocess.CompletedProcess]:
    """``accelerate launch --config_file multi_node_ddp.yaml --machine_rank R ...`` for R = 0, 1,
    concurrently (each waits for the other at the rendezvous)."""
    port = str(_free_port())
    # One torch thread per process: the 2 cores are shared (see test_trainer_cli.run).
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    procs = []
    for rank in (0, 1):
        # The config's own 16 processes / bf16 are for 2 x 8 GPUs; command-line flags override
        # it, as they would on a smaller cluster.
        argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
                "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", *target]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def test_config_parses_as_two_machines():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIG))
    assert str(cfg.distributed_type).split(".")[-1] == "MULTI_GPU"
    assert (cfg.num_machines, cfg.num_processes, cfg.rdzv_backend) == (2, 16, "static")


def test_each_machine_has_a_local_main_and_one_global_main(tmp_path):
    """What the trainer relies on across machines: one global main process (writes --out), a
    local main on every machine, node ranks from --machine_rank, one world."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, os, pathlib\n"
        "from macpo.trainer.train import process_state\n"
        "from macpo.trainer.train_config import TrainConfig\n"
        "state = process_state(TrainConfig(data='x', model='x', out='x'))\n"
        "state.wait_for_everyone()\n"
        f"pathlib.Path({str(tmp_path)!r}, f\"rank-{{os.environ['RANK']}}.json\").write_text(json.dumps({{\n"
        "    'node': os.environ['GROUP_RANK'], 'local_rank': state.local_process_index, 'n': state.num_processes,\n"
        "    'main': state.is_main_process, 'local_main': state.is_local_main_process}))\n"
    )
    for proc in launch_two_machines([str(script)]):
        assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [
        {"node": "0", "local_rank": 0, "n": 2, "main": True, "local_main": True},
        {"node": "1", "local_rank": 0, "n": 2, "main": False, "local_main": True},
    ]


def test_two_machines_train_like_one_process(store_dir, tiny_model_dir, tmp_path):  # noqa: F811
    """The trainer under the multi-node config: 2 machines x batch 2 take the same steps as one
    process with batch 4 (same global batches), and only the main machine writes --out."""
    from macpo.trainer.train import run_training

    out = tmp_path / "two-machines"
    flags = ["-m", "macpo.trainer", "--data", str(store_dir), "--dataset", "toy", "--version", "v1",
             "--subset", "default", "--model", str(tiny_model_dir), "--loss", "spac", "--max-steps", "2",
             "--max-samples", "8", "--lr", "1e-2", "--lr-scheduler", "constant", "--batch-size", "2",
             "--out", str(out)]
    for proc in launch_two_machines(flags):
        assert proc.returncode == 0, proc.stderr[-3000:]
    multi = json.loads((out / "metrics.json").read_text())
    assert multi["world_size"] == 2 and multi["steps"] == 2

    single = run_training(make_cfg(store_dir, tiny_model_dir, tmp_path / "single", loss="spac", max_steps=2,
                                   max_samples=8, batch_size=4, lr=1e-2, lr_scheduler="constant"))
    assert single["world_size"] == 1
    assert multi["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert (out / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".*partial*"))
