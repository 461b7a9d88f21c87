"""``macpo train``: the trainer stage as a command (see train_config.py for every option).

``--launcher accelerate`` re-runs the same command under ``accelerate launch -m macpo.trainer``
(several GPUs, or several CPU processes); ``accelerate launch -m macpo.trainer ...`` directly
works too.
"""

from __future__ import annotations

import os
import subprocess
import sys

from macpo.cliutil import run_script
from macpo.errors import UserError
from macpo.trainer.modeling import use_cpu
from macpo.trainer.train import run_training
from macpo.trainer.train_config import parse_args, to_argv


def accelerate_command(cfg) -> list[str]:
    """``accelerate launch ... -m macpo.trainer <flags>`` reproducing ``cfg`` without the launcher."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        if not os.path.isfile(cfg.accelerate_config):
            raise UserError(f"--accelerate-config {cfg.accelerate_config} does not exist")
        cmd += ["--config_file", cfg.accelerate_config]
    if cfg.num_processes:
        cmd += ["--num_processes", str(cfg.num_processes)]
    if not cfg.accelerate_config:
        # Explicit, so neither accelerate's warnings nor a stray ~/.cache config decide.
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if cfg.num_processes > 1:
            # accelerate 1.15 routes `--cpu` to its single-process launcher (several CPU processes
            # need MPI and --mpirun_hostfile). `--multi_gpu` is the torch.distributed launcher; on a
            # machine without CUDA each process runs on CPU with the gloo backend.
            cmd += ["--multi_gpu"]
        elif use_cpu(cfg):
            cmd += ["--cpu"]
    cmd += ["-m", "macpo.trainer", *to_argv(cfg, skip=("launcher", "num_processes", "accelerate_config"))]
    return cmd


def main(argv: list[str]) -> int:
    return run(parse_args(argv))


def run(cfg) -> int:
    """Train one validated TrainConfig: here, or under ``accelerate launch`` when its launcher says so."""
    if cfg.launcher == "accelerate":
        return subprocess.call(accelerate_command(cfg))
    metrics = run_training(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        losses = metrics["losses"]
        span = f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no logged steps"
        print(
            f"trained {cfg.loss} for {metrics['steps']} step(s) on {metrics['rows']} rows "
            f"(loss {span}, {metrics['seconds']:.1f} s); wrote {cfg.out} ({metrics['model']['saved']})"
        )
    return 0


if __name__ == "__main__":
    run_script("macpo train", main)
