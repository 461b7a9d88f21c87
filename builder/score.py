"""Response log-probs and perplexity of (prompt, response) rows under a causal LM.

Tokenisation follows TRL 1.16's ``DPOTrainer`` exactly (``_prepare_dataset`` + the
collator's truncation), so summed log-probs stored as ``ref_chosen_logps`` /
``ref_rejected_logps`` equal what DPOTrainer computes for the same model and row:

- conversational rows: ``prompt_ids = apply_chat_template(prompt, add_generation_prompt=True)``
  and ``full_ids = apply_chat_template(prompt + response)``; the response is ``full_ids`` after
  the common prefix with ``prompt_ids`` (so it includes the template's end-of-turn tokens);
- plain-text rows: ``tokenizer(prompt)`` and ``tokenizer(prompt + response + eos)`` (TRL
  appends ``eos_token`` unless already present);
- for a pair, the prompt boundary is the *shorter* of the chosen and rejected common
  prefixes, as TRL does (:func:`score_pairs`); ``max_length`` truncates prompt+response from
  the end like ``DPOConfig.max_length`` with ``truncation_mode="keep_start"``.

Speed (docs/runtime-notes.md): padding is pure loss on CPU, and an attention mask
pushes SDPA off its fast causal path. Rows are sorted by length and cut into batches of at
most ``batch_tokens`` tokens with at most 5% padding (:func:`token_batches`); padding goes on
the right and no attention mask is passed, which is exact for a causal LM because real tokens
never attend to later positions. Only response positions go through the LM head and
log-softmax. Batching depends only on the row lengths, so scores are reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from macpo.builder.models import use_adapter
from macpo.errors import UserError
from macpo.tokens import common_prefix_len

# Lazy, inside the functions that use them: torch. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.

# LM-head chunk: about 1 MB of fp32 logits, so log_softmax reads them from cache (tiny model:
# 1.16x -> 1.21x the one-row loop, interleaved A/B), but at least 128 rows, so a big vocabulary's head weight is
# not re-read from memory for every few rows (SmolLM2: 21-row chunks were 10% slower, 85 equal).
_HEAD_CHUNK_FLOATS = 1 << 18
_HEAD_CHUNK_MIN_ROWS = 128
# Config fields that change logits after the LM head; models that set them use the full forward.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")

# Padded positions allowed per batch (see token_batches).
MAX_PADDING = 0.05

CURRENT = "<current adapter>"  # score under whatever adapter state the model is in


@dataclass
class Scores:
    """Per-row results, aligned with the input rows."""

    sum_logps: np.ndarray  # float64, summed response-token log-probs (TRL's ref logps)
    n_tokens: np.ndarray  # int64, scored response tokens
    token_logps: list[np.ndarray]  # float32 per-token log-probs of each row

    @property
    def mean_logps(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_tokens > 0, self.sum_logps / np.maximum(self.n_tokens, 1), np.nan)

    @property
    def ppl(self) -> np.ndarray:
        """exp(-mean token log-prob); NaN for rows with no response token."""
        return np.exp(-self.mean_logps)


def _as_messages(response: Any) -> list[dict]:
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return [dict(m) for m in response]


def encode_row(
    tokenizer: Any, prompt: Any, responses: Sequence[Any], max_length: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """``[(prompt_ids, response_ids), ...]`` for one prompt and its responses, as TRL tokenises them."""
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        texts = [r if isinstance(r, str) else _as_messages(r)[-1]["content"] for r in responses]
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        fulls = [list(tokenizer(text=prompt + t + ("" if t.endswith(eos) else eos))["input_ids"]) for t in texts]
    else:
        messages = [dict(m) for m in prompt]
        template = {"tokenize": True, "return_dict": True}
        prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template)["input_ids"])
        fulls = [
            list(tokenizer.apply_chat_template(messages + _as_messages(r), **template)["input_ids"]) for r in responses
        ]
    cut = min(common_prefix_len(prompt_ids, full) for full in fulls)
    out = []
    for full in fulls:
        if max_length is not None:
            full = full[:max_length]
        out.append((prompt_ids[:cut], full[cut:]))
    return out


def _check_rows(prompts: Sequence[Any], *columns: Sequence[Any]) -> None:
    for column in columns:
        if len(column) != len(prompts):
            raise UserError(f"scoring needs one response per prompt: {len(prompts)} prompts, {len(column)} responses")


def score(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    responses: Sequence[Any],
    *,
    adapter: str | None = CURRENT,
    batch_tokens: int = 4096,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "score",
) -> Scores:
    """Score each ``responses[i]`` given ``prompts[i]``.

    Prompts are TRL message lists (or plain strings); responses are assistant message lists
    or plain text. ``adapter`` picks a loaded PEFT adapter by name (``None`` = bare base;
    default: leave the model as it is). ``batch_tokens`` bounds padded tokens per forward.
    """
    _check_rows(prompts, responses)
    rows = [encode_row(tokenizer, p, [r], max_length)[0] for p, r in zip(prompts, responses)]
    return _score_under(model, rows, adapter, batch_tokens, progress, desc)


def score_pairs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    chosen: Sequence[Any],
    rejected: Sequence[Any],
    *,
    adapter: str | None = CURRENT,
    batch_tokens: int = 4096,
    max_length: int | None = None,
    progress: bool = True,
) -> tuple[Scores, Scores]:
    """``(chosen scores, rejected scores)`` with TRL's shared prompt boundary per pair.

    ``sum_logps`` of each are the ``ref_chosen_logps`` / ``ref_rejected_logps`` DPOTrainer would
    compute with the same ``max_length`` (pass the trainer's ``DPOConfig.max_length``).
    """
    _check_rows(prompts, chosen, rejected)
    rows = [encode_row(tokenizer, p, [c, r], max_length) for p, c, r in zip(prompts, chosen, rejected)]
    both = _score_under(model, [r[0] for r in rows] + [r[1] for r in rows], adapter, batch_tokens, progress, "score pairs")
    n = len(rows)
    half = lambda s: Scores(both.sum_logps[s], both.n_tokens[s], both.token_logps[s])  # noqa: E731
    return half(slice(0, n)), half(slice(n, 2 * n))


def _score_under(model, rows, adapter, batch_tokens, progress, desc) -> Scores:
    if adapter == CURRENT:
        return score_ids(model, rows, batch_tokens=batch_tokens, progress=progress, desc=desc)
    with use_adapter(model, adapter):
        return score_ids(model, rows, batch_tokens=batch_tokens, progress=progress, desc=f"{desc} {adapter or 'base'}")


def token_batches(lengths: Sequence[int], batch_tokens: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Row indices, longest first, cut into batches of similar length.

    A batch grows while ``rows * longest <= batch_tokens`` and its padded positions stay at
    most ``max_padding`` of the batch. The padding cap matters for big models, where a forward
    costs the same per token at any batch size and every padded position is lost time (on
    SmolLM2 a 4096-token cap with no padding limit ran 14% slower than one row at a time);
    small models still get full batches wherever rows are dense in length.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    real = 0
    for i in order:
        if batches:
            rows, longest = len(batches[-1]) + 1, lengths[batches[-1][0]]
            padded = rows * longest
            if padded <= batch_tokens and padded - (real + lengths[i]) <= max_padding * padded:
                batches[-1].append(i)
                real += lengths[i]
                continue
        batches.append([i])
        real = lengths[i]
    return batches


def score_ids(
    model: Any,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_tokens: int = 4096,
    progress: bool = True,
    desc: str = "score",
) -> Scores:
    """Score pre-tokenised ``(prompt_ids, response_ids)`` rows (the engine behind :func:`score`)."""
    import torch
    from tqdm.auto import tqdm

    token_logps = [np.zeros(0, np.float32)] * len(rows)
    # A token at position 0 has no context and no log-prob (TRL drops it too).
    lengths = [len(p) + len(r) for p, r in rows]
    live = [i for i, (p, r) in enumerate(rows) if len(r) > (0 if p else 1)]
    forward = _Forward(model)
    bar = tqdm(total=sum(lengths[i] for i in live), desc=desc, unit="tok", unit_scale=True, disable=not progress)
    with torch.inference_mode(), bar:
        for batch in token_batches([lengths[i] for i in live], batch_tokens):
            batch = [live[j] for j in batch]
            for i, values in zip(batch, forward([rows[i] for i in batch])):
                token_logps[i] = values
            bar.update(sum(lengths[i] for i in batch))
    sums = np.array([float(v.astype(np.float64).sum()) for v in token_logps], dtype=np.float64)
    counts = np.array([len(v) for v in token_logps], dtype=np.int64)
    return Scores(sum_logps=sums, n_tokens=counts, token_logps=token_logps)


class _Forward:
    """One no-mask, right-padded forward; log-softmax only at response positions."""

    def __init__(self, model: Any):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: LoRA layers stay inside
        self.model = model
        self.device = next(model.parameters()).device
        config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        pad = config.pad_token_id
        # Any in-vocabulary id will do: padded positions come after every real token.
        self.pad = pad if pad is not None and 0 <= pad < lm.get_input_embeddings().num_embeddings else 0
        fused = all(getattr(config, name, None) is None for name in _LOGIT_TRANSFORMS)
        self.backbone = getattr(lm, lm.base_model_prefix, None) if fused else None
        self.head = lm.get_output_embeddings() if self.backbone is not None else None

    def __call__(self, rows: list[tuple[Sequence[int], Sequence[int]]]) -> list[np.ndarray]:
        import torch

        lengths = np.array([len(p) + len(r) for p, r in rows])
        starts = np.array([max(len(p), 1) for p, _ in rows])  # first scored position of each row
        ids = np.full((len(rows), lengths.max()), int(self.pad), dtype=np.int64)
        for b, (p, r) in enumerate(rows):
            ids[b, : len(p)] = p
            ids[b, len(p) : lengths[b]] = r
        counts = lengths - starts
        row_index = np.repeat(np.arange(len(rows)), counts)
        # Hidden state at t-1 predicts token t, for t from each row's start to its end.
        positions = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + starts[row_index] - 1
        ids = torch.from_numpy(ids).to(self.device)
        row_index = torch.from_numpy(row_index).to(self.device)
        positions = torch.from_numpy(positions).to(self.device)
        targets = ids[row_index, positions + 1]
        if self.backbone is not None:
            hidden = self.backbone(input_ids=ids, use_cache=False).last_hidden_state[row_index, positions]
            logps = self._head_logps(hidden, targets)
        else:
            logits = self.model(input_ids=ids, use_cache=False).logits[row_index, positions]
            logps = logits.float().log_softmax(-1).gather(-1, targets[:, None])[:, 0]
        return [x.numpy() for x in logps.float().cpu().split(counts.tolist())]

    def _head_logps(self, hidden, targets):
        import torch

        chunk = max(_HEAD_CHUNK_MIN_ROWS, _HEAD_CHUNK_FLOATS // self.head.weight.shape[0])
        parts = []
        for h, t in zip(hidden.split(chunk), targets.split(chunk)):
            logits = self.head(h).float()
            # log_softmax is one fused kernel; logsumexp on CPU is amax/sub/exp/sum passes (2-4x slower).
            parts.append(logits.log_softmax(-1).gather(-1, t[:, None])[:, 0])
        return torch.cat(parts) if parts else hidden.new_zeros(0)
