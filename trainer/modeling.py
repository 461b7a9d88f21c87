"""Loading the policy, its tokenizer, a previous LoRA adapter and the DPO reference.

Reference choices (``--ref``), for the preference losses:

- ``previous``: a frozen copy of the starting policy π_t. With LoRA + ``--adapter`` that is
  TRL's own mechanism (it adds a frozen ``ref`` copy of the loaded adapter); for full
  fine-tuning it is a deep copy of the starting weights (base, or base + adapter merged).
- ``base``: the agent's pretrained base weights, in every mode. With LoRA, the adapter is
  disabled (what TRL does with a fresh ``peft_config``; MACPO's released code does the same);
  for full fine-tuning from base + adapter, a copy of the base weights before the merge; for a
  full fine-tune that continues a previous round's folder, ``--ref-model`` (the run passes the
  agent's base model there).

Without ``--adapter`` or ``--ref-model`` both are the same model. When the data carries
reference log-probs no reference is built at all. ``metrics.json`` records which weights served
as the reference, by path and hash (:func:`weights_identity`).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macpo.errors import UserError
from macpo.hashing import file_sha256, json_hash
from macpo.trainer.train_config import TrainConfig

# Lazy, inside the functions that use them: torch, transformers and peft. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.


@dataclass
class Policy:
    model: Any
    peft_config: Any = None  # a LoraConfig for a fresh adapter (TRL wraps the model)
    ref_model: Any = None  # an explicit frozen reference (full fine-tuning)
    drop_ref_adapter: bool = False  # --ref base on a continued adapter: remove TRL's "ref" copy
    reference: Any = "none"  # for metrics.json: {"role", "how", "weights": [{"path", "revision", "hash"}]}


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
    if cfg.ref_model and Path(cfg.ref_model).is_file():
        raise UserError(f"--ref-model {cfg.ref_model}: a file, not a model folder")
    if cfg.adapter and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        raise UserError(f"--adapter {cfg.adapter}: not a LoRA adapter folder (no adapter_config.json)")


def load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    check_model_path(cfg)
    revision, gguf_file = _base_options(cfg, cfg.model)
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model, revision=revision, gguf_file=gguf_file)
    except (OSError, ValueError) as exc:
        raise UserError(f"--model {cfg.model}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _base_options(cfg: TrainConfig, path: str) -> tuple[str | None, str | None]:
    """(revision, gguf_file) for loading ``path``: with --ref-model they describe the base only,
    since --model is then a previous round's local folder."""
    if cfg.ref_model and path != cfg.ref_model:
        return None, None
    return cfg.model_revision, cfg.gguf_file


def load_base(cfg: TrainConfig, path: str | None = None):
    from transformers import AutoModelForCausalLM

    check_model_path(cfg)
    path = path or cfg.model
    revision, gguf_file = _base_options(cfg, path)
    flag = "--ref-model" if path == cfg.ref_model and path != cfg.model else "--model"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, gguf_file=gguf_file, dtype=torch_dtype(cfg))
    except (OSError, ValueError) as exc:
        raise UserError(f"{flag} {path}: cannot load a causal LM ({str(exc).splitlines()[0]})") from None
    if gguf_file:
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


def weights_identity(path: str, revision: str | None = None, gguf_file: str | None = None) -> dict:
    """``{"path", "revision", "commit", "hash"}`` of the weights at ``path``: sha256 over the weight
    files (names and contents) of a local folder, or of the Hub snapshot ``revision`` resolves to."""
    folder, commit = Path(path), None
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(path), "config.json", revision=revision)
        folder = Path(cached).parent if isinstance(cached, str) else None
        commit = folder.name if folder is not None else None
    digest = None
    if folder is not None:
        names = [gguf_file] if gguf_file else sorted(
            f.name for f in folder.iterdir() if f.is_file() and f.suffix in {".safetensors", ".bin", ".pt", ".gguf"})
        digest = json_hash([[name, file_sha256(folder / name)] for name in names])
    return {"path": str(path), "revision": revision, "gguf_file": gguf_file, "commit": commit, "hash": digest}


def load_policy(cfg: TrainConfig, need_ref: bool) -> Policy:
    """The trainable model and (when ``need_ref``) the way its reference is obtained."""
    base = load_base(cfg)
    revision, gguf_file = _base_options(cfg, cfg.model)

    def ref(role: str, how: str, *weights) -> dict:
        """metrics.json's reference record. ``weights``: "model" / "adapter" (hashed only here, when
        they serve as the reference) or an identity dict."""
        ids = {"model": lambda: weights_identity(cfg.model, revision, gguf_file), "adapter": lambda: weights_identity(cfg.adapter)}
        return {"role": role, "how": how, "weights": [ids[w]() if isinstance(w, str) else w for w in weights]}

    lora = cfg.lora_r > 0
    if not need_ref:
        note = "stored" if cfg.loss != "sft" else "none"
        if cfg.adapter and lora:
            return Policy(_load_adapter(base, cfg, trainable=True), reference=note)
        if cfg.adapter:
            return _merged_policy(base, cfg, reference=note)
        return Policy(base, peft_config=lora_config(cfg) if lora else None, reference=note)
    if cfg.adapter and lora:
        model = _load_adapter(base, cfg, trainable=True)
        if cfg.ref == "base":
            return Policy(model, drop_ref_adapter=True, reference=ref("base", "adapter disabled", "model"))
        return Policy(model, reference=ref("previous", "frozen copy of the loaded adapter", "model", "adapter"))
    if cfg.adapter:  # full fine-tuning that starts from base + adapter
        base_copy = copy.deepcopy(base) if cfg.ref == "base" else None
        policy = _merged_policy(base, cfg, reference=None)
        if cfg.ref == "base":
            return Policy(policy.model, ref_model=base_copy, reference=ref("base", "copy of the base before the merge", "model"))
        return Policy(policy.model, ref_model=copy.deepcopy(policy.model),
                      reference=ref("previous", "copy of base + adapter", "model", "adapter"))
    if lora:
        # A fresh adapter: base and starting policy coincide; TRL disables the adapter for the reference.
        return Policy(base, peft_config=lora_config(cfg), reference=ref(cfg.ref, "adapter disabled", "model"))
    if cfg.ref == "base" and cfg.ref_model and cfg.ref_model != cfg.model:
        # --model is a previous round's full fine-tune; the base weights come from --ref-model.
        ref_base = load_base(cfg, cfg.ref_model)
        ref_base.requires_grad_(False)
        return Policy(base, ref_model=ref_base,
                      reference=ref("base", "separate base model (--ref-model)",
                                    weights_identity(cfg.ref_model, cfg.model_revision, cfg.gguf_file)))
    # Passed explicitly: TRL would otherwise re-load it from the path without our revision/gguf options.
    how = "frozen copy of --model" + (" (no --ref-model given: --model is taken as the base)" if cfg.ref == "base" else "")
    return Policy(base, ref_model=copy.deepcopy(base), reference=ref(cfg.ref, how, "model"))


def _merged_policy(base, cfg: TrainConfig, reference) -> Policy:
    model = _load_adapter(base, cfg, trainable=False).merge_and_unload()
    model.requires_grad_(True)  # PEFT froze the base weights while the adapter was attached
    return Policy(model, reference=reference)
