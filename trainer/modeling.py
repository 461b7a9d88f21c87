"""Loading the policy, its tokenizer, a previous LoRA adapter and the DPO reference.

Reference choices (``--ref``), for the preference losses:

- ``previous``: a frozen copy of the starting policy π_t. With LoRA + ``--adapter`` that is
  TRL's own mechanism (it adds a frozen ``ref`` copy of the loaded adapter); for full
  fine-tuning it is a deep copy of the starting weights (base, or base + adapter merged).
- ``base``: the base model. With LoRA, the adapter is disabled (what TRL does with a fresh
  ``peft_config``; MACPO's released code does the same); for full fine-tuning a copy of the
  base weights before any adapter is merged.

Without ``--adapter`` both are the same model. When the data carries reference log-probs no
reference is built at all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macpo.errors import UserError
from macpo.trainer.train_config import TrainConfig


@dataclass
class Policy:
    model: Any
    peft_config: Any = None  # a LoraConfig for a fresh adapter (TRL wraps the model)
    ref_model: Any = None  # an explicit frozen reference (full fine-tuning)
    drop_ref_adapter: bool = False  # --ref base on a continued adapter: remove TRL's "ref" copy
    reference: str = "none"  # human-readable description for metrics.json


def torch_dtype(cfg: TrainConfig):
    import torch

    precision = resolve_precision(cfg)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def use_cpu(cfg: TrainConfig) -> bool:
    import torch

    return cfg.cpu or not torch.cuda.is_available()


def resolve_precision(cfg: TrainConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    import torch

    if not use_cpu(cfg) and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def check_model_path(cfg: TrainConfig) -> None:
    path = Path(cfg.model)
    if path.exists():
        if path.is_file():
            raise UserError(f"--model {cfg.model}: a file, not a model folder (for a GGUF file pass its folder and --gguf-file)")
        if cfg.gguf_file:
            if not (path / cfg.gguf_file).is_file():
                raise UserError(f"--model {cfg.model}: no GGUF file {cfg.gguf_file!r} in it")
        elif not (path / "config.json").is_file():
            hint = " (it holds a LoRA adapter: pass its base as --model and it as --adapter)" if (
                path / "adapter_config.json"
            ).is_file() else ""
            raise UserError(f"--model {cfg.model}: not a model folder (no config.json){hint}")
    if cfg.adapter and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        raise UserError(f"--adapter {cfg.adapter}: not a LoRA adapter folder (no adapter_config.json)")


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    check_model_path(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model, revision=cfg.model_revision, gguf_file=cfg.gguf_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {cfg.model}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(cfg: TrainConfig):
    from transformers import AutoModelForCausalLM

    check_model_path(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.model, revision=cfg.model_revision, gguf_file=cfg.gguf_file, dtype=torch_dtype(cfg)
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {cfg.model}: cannot load a causal LM ({str(exc).splitlines()[0]})") from None
    if cfg.gguf_file:
        # A dequantised GGUF model is plain weights; without this, save_pretrained refuses it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def _load_adapter(base, cfg: TrainConfig, trainable: bool):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(cfg.adapter), is_trainable=trainable)


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    targets = cfg.lora_targets[0] if cfg.lora_targets == ["all-linear"] else list(cfg.lora_targets)
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )


def adapter_info(path: str) -> dict:
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def load_policy(cfg: TrainConfig, need_ref: bool) -> Policy:
    """The trainable model and (when ``need_ref``) the way its reference is obtained."""
    base = load_base(cfg)
    lora = cfg.lora_r > 0
    if cfg.adapter and lora:
        model = _load_adapter(base, cfg, trainable=True)
        if not need_ref:
            return Policy(model, reference="stored" if cfg.loss != "sft" else "none")
        if cfg.ref == "base":
            return Policy(model, drop_ref_adapter=True, reference="base (adapter disabled)")
        return Policy(model, reference="previous (frozen copy of the loaded adapter)")
    if cfg.adapter:  # full fine-tuning that starts from base + adapter
        base_copy = copy.deepcopy(base) if need_ref and cfg.ref == "base" else None
        model = _load_adapter(base, cfg, trainable=False).merge_and_unload()
        model.requires_grad_(True)  # PEFT froze the base weights while the adapter was attached
        if not need_ref:
            return Policy(model, reference="stored" if cfg.loss != "sft" else "none")
        if cfg.ref == "base":
            return Policy(model, ref_model=base_copy, reference="base (separate copy)")
        return Policy(model, ref_model=copy.deepcopy(model), reference="previous (copy of base + adapter)")
    if lora:
        # A fresh adapter: base and starting policy coincide; TRL disables the adapter for the reference.
        return Policy(base, peft_config=lora_config(cfg), reference="starting policy (adapter disabled)" if need_ref else (
            "stored" if cfg.loss != "sft" else "none"))
    if not need_ref:
        return Policy(base, reference="stored" if cfg.loss != "sft" else "none")
    # Passed explicitly: TRL would otherwise re-load it from the path without our revision/gguf options.
    return Policy(base, ref_model=copy.deepcopy(base), reference="starting policy (frozen copy)")
