"""Reward-model judges: sequence-classification checkpoints scoring (prompt, response).

On a GPU machine these are real HH / PKU reward models named in ``eval.reward_models`` (for
example ``OpenAssistant/reward-model-deberta-v3-large-v2`` or the ``Skywork/Skywork-Reward-V2``
family); the same code runs here on any local checkpoint. The score is the first logit, the
convention of HF reward models (``num_labels=1``).
"""

from __future__ import annotations

import functools

from macpo.builder.models import default_device
from macpo.errors import UserError

# Lazy, inside the functions that use them: torch and transformers. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.


def _render(tokenizer, prompt, response: str) -> str:
    messages = [dict(m) for m in prompt] + [{"role": "assistant", "content": response}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@functools.lru_cache(maxsize=2)
def load_reward_model(checkpoint: str):
    """``(model, tokenizer)`` of a sequence-classification checkpoint, kept for the next agent
    (eval scores every agent with the same reward models; an 8B one takes a while to load)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load reward model {checkpoint!r}: {str(exc).splitlines()[0]}") from None
    if getattr(model.config, "num_labels", 1) < 1:
        raise UserError(f"reward model {checkpoint!r} has no output label to score with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(default_device()), tokenizer


def reward_model_scores(checkpoint: str, prompts, responses, batch_size: int = 32) -> list[float]:
    import torch

    model, tokenizer = load_reward_model(str(checkpoint))
    texts = [_render(tokenizer, p, r) for p, r in zip(prompts, responses)]
    out: list[float] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True).to(model.device)
            out += model(**enc).logits[:, 0].float().tolist()
    return out


def win_rate(ours: list[float], theirs: list[float]) -> float | None:
    """Share of prompts where ``ours`` beats ``theirs``; ties count one half."""
    if not ours:
        return None
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs))
    return wins / len(ours)
