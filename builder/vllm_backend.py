"""vLLM generation backend (GPU, optional ``gpu`` extra): one engine serves every agent.

The base model is loaded once with ``enable_lora=True``; each agent's adapter is a
``LoRARequest(name, int_id, path)`` chosen per call. Prompts are rendered to token ids with
the Hugging Face chat template here, not by vLLM, so both backends (and TRL) see the very same
prompt tokens. Every request carries its own seed, ``derive_seed(params.seed, "prompt", i)``,
so samples do not depend on how vLLM schedules or batches requests.

``vllm`` is imported only when a ``VLLMGenerator`` is built; tests pass a stand-in through
``vllm=`` (any object with ``LLM``, ``SamplingParams`` and ``LoRARequest`` attributes), since
vLLM needs CUDA and cannot run on the CPU CI machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from macpo.builder.generate import Messages, SamplingParams, derive_seed, render_prompts
from macpo.errors import UserError

# vLLM's punica kernels are compiled for these LoRA ranks only.
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _import_vllm() -> Any:
    """The three vLLM names this backend uses, as one namespace (tests pass a stand-in)."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise UserError(
            "the vllm backend needs vLLM on a CUDA machine: pip install 'macpo[gpu]' "
            "(or use the transformers backend)"
        ) from exc
    return SimpleNamespace(LLM=vllm.LLM, SamplingParams=vllm.SamplingParams, LoRARequest=LoRARequest)


def max_lora_rank(adapters: Mapping[str, str | Path]) -> int:
    """Smallest rank vLLM supports that fits every adapter's ``r``."""
    ranks = [json.loads((Path(p) / "adapter_config.json").read_text()).get("r", 8) for p in adapters.values()]
    need = max(ranks, default=8)
    fitting = [r for r in _VLLM_LORA_RANKS if r >= need]
    if not fitting:
        raise UserError(f"LoRA rank {need} is larger than vLLM supports ({_VLLM_LORA_RANKS[-1]})")
    return fitting[0]


class VLLMGenerator:
    """The :class:`~macpo.builder.generate.Generator` protocol over ``vllm.LLM``."""

    def __init__(
        self,
        base: str | Path,
        adapters: Mapping[str, str | Path] | str | Path | None = None,
        *,
        gguf_file: str | None = None,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        tokenizer: Any = None,
        llm_kwargs: Mapping[str, Any] | None = None,
        progress: bool = True,
        vllm: Any = None,
    ):
        from macpo.builder.models import is_adapter_dir, resolve_adapters

        self.vllm = vllm or _import_vllm()
        self.progress = progress
        base, adapters, self.default_adapter = resolve_adapters(base, adapters)
        for name, path in adapters.items():
            if not is_adapter_dir(path):
                raise UserError(f"adapter {name!r}: {path} is not a PEFT adapter folder (no adapter_config.json)")
        # vLLM wants positive, unique integer ids; order them by name for stable ids across runs.
        self._lora = {
            name: self.vllm.LoRARequest(name, i, str(adapters[name]))
            for i, name in enumerate(sorted(adapters), start=1)
        }
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(base), **({"gguf_file": gguf_file} if gguf_file else {}))
        self.tokenizer = tokenizer
        engine: dict[str, Any] = {
            "model": str(Path(base) / gguf_file) if gguf_file else str(base),
            "tensor_parallel_size": tensor_parallel_size,
            "seed": seed,
        }
        if gguf_file:
            engine["tokenizer"] = str(base)
        if adapters:
            engine.update(enable_lora=True, max_loras=len(adapters), max_lora_rank=max_lora_rank(adapters))
        engine.update(llm_kwargs or {})
        self.llm = self.vllm.LLM(**engine)

    @property
    def adapters(self) -> list[str]:
        return sorted(self._lora)

    def sampling_params(self, params: SamplingParams, index: int) -> Any:
        """vLLM ``SamplingParams`` for prompt ``index``: greedy runs once, its answer is repeated."""
        return self.vllm.SamplingParams(
            n=1 if params.greedy else params.n,
            temperature=params.temperature,
            top_p=params.top_p if not params.greedy else 1.0,
            top_k=params.top_k if params.top_k > 0 and not params.greedy else -1,
            max_tokens=params.max_new_tokens,
            seed=derive_seed(params.seed, "prompt", index),
            skip_special_tokens=True,
        )

    def generate(
        self, prompts: Sequence[Messages], params: SamplingParams, adapter: str | None = None
    ) -> list[list[str]]:
        adapter = adapter if adapter is not None else self.default_adapter
        if adapter is not None and adapter not in self._lora:
            raise UserError(f"unknown adapter {adapter!r} (adapters: {', '.join(self.adapters) or 'none loaded'})")
        requests = [{"prompt_token_ids": ids} for ids in render_prompts(self.tokenizer, prompts)]
        outputs = self.llm.generate(
            requests,
            [self.sampling_params(params, i) for i in range(len(requests))],
            use_tqdm=self.progress,
            lora_request=self._lora.get(adapter) if adapter else None,
        )
        return parse_outputs(outputs, expected=len(requests), n=params.n, repeat=params.greedy)


def parse_outputs(outputs: Sequence[Any], expected: int, n: int, repeat: bool = False) -> list[list[str]]:
    """Texts from vLLM ``RequestOutput``s, in request order, ``n`` per prompt.

    ``repeat``: each request ran once (greedy) and its answer stands for all ``n`` samples.
    """
    if len(outputs) != expected:
        raise RuntimeError(f"vLLM returned {len(outputs)} results for {expected} prompts")
    results = []
    for out in outputs:
        texts = [c.text for c in sorted(out.outputs, key=lambda c: c.index)]
        texts = texts * n if repeat else texts
        if len(texts) != n:
            raise RuntimeError(f"vLLM returned {len(texts)} completions for a prompt, expected {n}")
        results.append(texts)
    return results
