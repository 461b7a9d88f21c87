"""``TrainConfig``: every option of the trainer stage, one dataclass.

Command-line flags and ``--config FILE.yaml`` keys are the same fields (parsed with TRL's
``TrlParser``, an ``HfArgumentParser`` that layers a YAML file under the flags, as TRL's own
CLI does). Flags are spelled with dashes or underscores: ``--max-steps`` = ``--max_steps``.

No torch/transformers import at module level: ``macpo train --help`` stays quick.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from macpo.configfields import build, load_yaml, read_config_text
from macpo.configfields import help_field as _f
from macpo.errors import UserError

LOSSES = ("sft", "dpo", "dpo-nll", "spin", "spac")


@dataclass
class TrainConfig:
    # ---- data -------------------------------------------------------------------------
    data: str = _f(None, "required: store directory, or Hub dataset ORG/NAME[@REVISION] (the revision is pinned and recorded)")
    subset: str = _f(None, "required: subset (config) to train on, e.g. 'default', 'student', 'round-2-student'")
    dataset: Optional[str] = _f(None, "dataset name inside the store (optional when the store holds one dataset)")
    version: Optional[str] = _f(None, "dataset version (store: latest if omitted; Hub: names the round, e.g. round-2)")
    max_samples: Optional[int] = _f(None, "train on the first N rows only")
    # ---- model ------------------------------------------------------------------------
    model: str = _f(None, "required: base model, a local folder or Hub id")
    model_revision: Optional[str] = _f(None, "Hub revision of --model")
    gguf_file: Optional[str] = _f(None, "GGUF file inside --model, dequantised by transformers (gguf_file=)")
    adapter: Optional[str] = _f(None, "LoRA adapter folder to continue training (the previous round's output)")
    out: str = _f(None, "required: output folder (adapter or model, tokenizer, metrics.json, README.md); written atomically")
    overwrite: bool = _f(False, "replace --out if it already exists (otherwise refuse)")
    merge: bool = _f(False, "save base + adapter merged into a full model instead of the adapter")
    # ---- objective --------------------------------------------------------------------
    loss: Literal["sft", "dpo", "dpo-nll", "spin", "spac"] = _f(
        "dpo-nll", "sft | dpo | dpo-nll (DPO + gamma*NLL, MACPO) | spin | spac"
    )
    beta: float = _f(0.1, "DPO/SPIN/SPAC inverse temperature beta")
    nll_weight: float = _f(0.2, "gamma: weight of the length-averaged NLL on chosen in dpo-nll")
    alpha: float = _f(0.5, "SPAC pessimism weight alpha (0 = plain DPO against the starting policy)")
    ref: Literal["base", "previous"] = _f(
        "previous",
        "DPO reference: 'previous' = a frozen copy of the start-of-round policy (--model, plus --adapter); "
        "'base' = the agent's pretrained base weights (--ref-model when --model is a previous full "
        "fine-tune, else --model with any adapter disabled). Ignored when the data carries ref_*_logps.",
    )
    ref_model: Optional[str] = _f(
        None,
        "the agent's pretrained base weights, for --ref base when --model is a previous round's full "
        "fine-tune (loaded with --model-revision/--gguf-file, which describe the base)",
    )
    # ---- optimisation -----------------------------------------------------------------
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: run --epochs)")
    epochs: float = _f(1.0, "epochs over the subset")
    batch_size: int = _f(8, "per-device batch size (pairs for preference losses)")
    grad_accum: int = _f(1, "gradient accumulation steps")
    lr: float = _f(1e-5, "learning rate (MACPO: 1e-5 for DPO rounds, 5e-5 for SFT init)")
    lr_scheduler: str = _f("cosine", "learning-rate schedule (transformers SchedulerType: cosine, linear, constant, ...)")
    warmup_ratio: float = _f(0.0, "fraction of steps used for linear warmup")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_length: int = _f(1024, "maximum tokens per prompt+completion (longer sequences are truncated)")
    seed: int = _f(0, "seed for data order, dropout and LoRA initialisation")
    # ---- LoRA -------------------------------------------------------------------------
    lora_r: int = _f(8, "LoRA rank (0 = full fine-tuning)")
    lora_alpha: int = _f(16, "LoRA alpha")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_targets: list[str] = _f(["q_proj", "v_proj"], "LoRA target modules (or 'all-linear')")
    # ---- hardware ---------------------------------------------------------------------
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "training precision; auto = bf16 on a bf16-capable GPU, fp32 otherwise"
    )
    activation_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    threads: int = _f(0, "torch CPU threads per process (0 = $OMP_NUM_THREADS if set, else cores / local processes)")
    launcher: Literal["none", "accelerate"] = _f("none", "'accelerate' re-runs this command under `accelerate launch`")
    num_processes: int = _f(0, "processes for --launcher accelerate (0 = accelerate's default / config)")
    accelerate_config: Optional[str] = _f(None, "accelerate config file for --launcher accelerate (see trainer/accelerate_configs)")
    cpu: bool = _f(False, "force CPU even when a GPU is visible")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


REQUIRED = ("data", "subset", "model", "out")
# Fields that name one job's inputs and outputs. ``macpo run`` sets them for every job it
# launches (from the round, the agent and the run's models); a run config's ``train.<stage>``
# sections hold every other field.
JOB_FIELDS = ("data", "subset", "dataset", "version", "model", "model_revision", "gguf_file", "adapter",
              "ref_model", "out", "overwrite", "seed")


def validate(cfg: TrainConfig) -> TrainConfig:
    missing = [name for name in REQUIRED if not getattr(cfg, name)]
    if missing:
        raise UserError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return check_values(cfg)


def check_values(cfg: TrainConfig, where: str = "") -> TrainConfig:
    """Range checks of every hyperparameter (``where`` prefixes the message, e.g. 'train.dpo: ')."""
    try:
        _check_values(cfg)
    except UserError as exc:
        raise UserError(f"{where}{exc}") from None
    return cfg


def _check_values(cfg: TrainConfig) -> None:
    if cfg.loss not in LOSSES:
        raise UserError(f"unknown loss {cfg.loss!r}; choose one of {', '.join(LOSSES)}")
    for f in dataclasses.fields(cfg):  # nan passes every `> 0` below as False, inf passes them as True
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
    checks = [
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.grad_accum >= 1, "--grad-accum must be >= 1"),
        (cfg.lr > 0, "--lr must be > 0"),
        (cfg.beta > 0, "--beta must be > 0"),
        (cfg.alpha >= 0, "--alpha must be >= 0"),
        (cfg.nll_weight >= 0, "--nll-weight must be >= 0"),
        (cfg.lora_r >= 0, "--lora-r must be >= 0 (0 = full fine-tuning)"),
        (cfg.max_length >= 8, "--max-length must be >= 8"),
        (cfg.max_steps == -1 or cfg.max_steps >= 1, "--max-steps must be >= 1 (or -1 for --epochs)"),
        (cfg.epochs > 0, "--epochs must be > 0"),
        (cfg.max_samples is None or cfg.max_samples >= 1, "--max-samples must be >= 1"),
        (not (cfg.merge and cfg.lora_r == 0 and not cfg.adapter), "--merge needs LoRA (--lora-r > 0 or --adapter)"),
        (cfg.threads >= 0, "--threads must be >= 0"),
    ]
    checks += [
        (cfg.ref in ("base", "previous"), f"--ref must be 'base' or 'previous', got {cfg.ref!r}"),
        (cfg.precision in ("auto", "fp32", "bf16", "fp16"), f"--precision must be auto, fp32, bf16 or fp16, got {cfg.precision!r}"),
        (cfg.launcher in ("none", "accelerate"), f"--launcher must be 'none' or 'accelerate', got {cfg.launcher!r}"),
        (cfg.num_processes >= 0, "--num-processes must be >= 0"),
        (0 <= cfg.lora_dropout < 1, "--lora-dropout must be in [0, 1)"),
        (0 <= cfg.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)"),
        (cfg.weight_decay >= 0, "--weight-decay must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _parser():
    from trl import TrlParser  # heavy (torch, transformers): only a command that parses flags pays for it

    class Parser(TrlParser):
        """TrlParser with the project's one-line usage errors (exit 2)."""

        def error(self, message):  # argparse API
            sys.stderr.write(f"macpo train: error: {message} (see --help)\n")
            raise SystemExit(2)

    return Parser(
        [TrainConfig],
        prog="macpo train",
        description=(
            "Trainer stage: train one agent on one round dataset with TRL + PEFT "
            "(sft, dpo, dpo-nll, spin, spac). Options may also come from --config FILE.yaml "
            "(same names); flags override the file."
        ),
    )


def parse_args(argv: list[str]) -> TrainConfig:
    """Flags (+ optional ``--config FILE.yaml``) -> a validated TrainConfig."""
    argv = list(argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a YAML file path")
        _check_yaml(argv[i + 1])
    parser = _parser()
    try:
        (cfg,) = parser.parse_args_and_config(argv)
    except ValueError as exc:  # TrlParser reports YAML problems as ValueError
        raise UserError(str(exc).splitlines()[0]) from None
    return validate(cfg)


def _check_yaml(path: str) -> None:
    """Refuse unknown keys up front with the field names, instead of TrlParser's generic message."""
    # The run config's checks (a regular UTF-8 file, no YAML aliases) before TrlParser reads it again.
    data = load_yaml(read_config_text(Path(path)), path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of option -> value")
    names = {f.name for f in dataclasses.fields(TrainConfig)} | {"env"}
    unknown = sorted(k for k in data if str(k).replace("-", "_") not in names)
    if unknown:
        raise UserError(f"{path}: unknown option(s) {', '.join(map(str, unknown))}")


def from_dict(data: dict) -> TrainConfig:
    """A validated TrainConfig from a mapping of its fields (unknown names and wrong types refused)."""
    return validate(build(TrainConfig, data, "train job"))


def to_argv(cfg: TrainConfig, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that reproduce ``cfg`` (used to re-launch under accelerate)."""
    argv: list[str] = []
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in skip or value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name
        if isinstance(value, bool):
            argv += [flag, str(value).lower()]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv
