"""The generation interface every backend implements and shares: ``Generator``, prompts as TRL
message lists, per-call seeds, and the chat-template rendering both backends (and TRL) use.

A generator holds one base model and any number of named LoRA adapters (one per agent) and
answers ``generate(prompts, params, adapter=name)`` with ``n`` completions per prompt.
Prompts are TRL message lists; every backend renders them with the model's chat template
(``apply_chat_template(..., add_generation_prompt=True)``), the same token ids TRL trains on.
The backends (:mod:`macpo.builder.transformers_backend`, :mod:`macpo.builder.vllm_backend`)
import this module and never each other; :mod:`macpo.builder.generate` picks one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from macpo.errors import UserError
from macpo.sampling import SamplingParams

Message = Mapping[str, str]
Messages = Sequence[Message]


class Generator(Protocol):
    """``n`` completions (plain assistant text) for each chat prompt, in prompt order.

    ``adapter`` names a loaded LoRA adapter; ``None`` means the generator's default: the
    adapter it was loaded from when its model path is a PEFT adapter folder, else the base.
    """

    def generate(
        self, prompts: Sequence[Messages], params: SamplingParams, adapter: str | None = None
    ) -> list[list[str]]: ...

    @property
    def adapters(self) -> list[str]: ...


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from ``seed`` and any labels (batch index, agent, round): stable across runs."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def render_prompts(tokenizer: Any, prompts: Sequence[Messages]) -> list[list[int]]:
    """Token ids of each prompt under the chat template, ending with the assistant header.

    Same call as TRL's DPOTrainer uses for the prompt (``tokenize=True``, so no second BOS).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserError("the tokenizer has no chat template; generation needs one to render prompts")
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        out.append(list(ids))
    return out
