"""The transformers generation backend: batched ``model.generate`` on CPU or GPU.

Reproducibility: batches are formed after sorting prompts by token length, and batch ``b`` is
sampled under ``torch.Generator`` state ``derive_seed(seed, b)``. So the same prompts, params and
``batch_size`` give the same text on the same hardware, whatever ran before; a different
``batch_size`` or prompt set changes the batches and so the samples (greedy output can also shift
by float rounding of left padding). The vLLM backend seeds each request on its own and so does
not depend on batching at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from macpo.builder.engine import Messages, derive_seed, render_prompts
from macpo.builder.models import adapter_names, load_model, resolve_adapters, use_adapter
from macpo.sampling import SamplingParams

# Lazy, inside the functions that use them: torch. torch alone takes seconds to
# import, and planning, --help and reports import this module without running a model.


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (longest first, so OOM shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class TransformersGenerator:
    """Batched ``model.generate`` with left padding, length-sorted batches and a progress bar."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        progress: bool = True,
        default_adapter: str | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.default_adapter = default_adapter

    @classmethod
    def load(
        cls,
        base: str | Path,
        adapters: Mapping[str, str | Path] | str | Path | None = None,
        *,
        gguf_file: str | None = None,
        revision: str | None = None,
        dtype: Any = None,
        device: str | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ) -> TransformersGenerator:
        """Load a base (full model folder, Hub id, GGUF via ``gguf_file``, or a PEFT adapter
        folder, which becomes the default adapter) plus named adapters."""
        base, adapters, default = resolve_adapters(base, adapters)
        model, tokenizer = load_model(
            base, adapters=adapters, gguf_file=gguf_file, revision=revision, dtype=dtype, device=device
        )
        return cls(model, tokenizer, batch_size=batch_size, progress=progress, default_adapter=default)

    @property
    def adapters(self) -> list[str]:
        return adapter_names(self.model)

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _generate_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        # Every knob is explicit: None would be filled from the model's own generation_config
        # (e.g. a repetition_penalty or top_k=50), and both backends must sample the same way.
        sample = not params.greedy
        warpers = {"temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k}
        if sample and params.top_p < 1.0:
            # transformers' top-p sorts the whole vocabulary every step (48 ms of a ~250 ms SmolLM2
            # batch-16 step); NucleusWarper does the same three warpers on a top-k candidate set.
            warpers = {"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                       "logits_processor": [NucleusWarper(params.temperature, params.top_k, params.top_p)]}
        return {
            "do_sample": sample,
            **(warpers if sample else {}),
            "num_return_sequences": params.n if sample else 1,
            "max_new_tokens": params.max_new_tokens,
            "min_new_tokens": 0,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "eos_token_id": self._eos_ids(),
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    def generate(
        self, prompts: Sequence[Messages], params: SamplingParams, adapter: str | None = None
    ) -> list[list[str]]:
        import torch

        adapter = adapter if adapter is not None else self.default_adapter
        ids = render_prompts(self.tokenizer, prompts)
        batches = length_batches([len(x) for x in ids], self.batch_size)
        kwargs = self._generate_kwargs(params)
        per_row = kwargs["num_return_sequences"]
        results: list[list[str]] = [[] for _ in prompts]
        bar = tqdm(total=len(prompts), desc=f"generate {adapter or 'base'}", unit="prompt", disable=not self.progress)
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        # generate() samples from torch's global RNG; fork it so callers' random state is untouched.
        with use_adapter(self.model, adapter), torch.inference_mode(), torch.random.fork_rng(devices), bar:
            for b, rows in enumerate(batches):
                input_ids, attention_mask = self._left_pad([ids[i] for i in rows])
                torch.manual_seed(derive_seed(params.seed, "batch", b))
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                texts = self.tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
                for j, row in enumerate(rows):
                    samples = texts[j * per_row : (j + 1) * per_row]
                    results[row] = samples if per_row == params.n else samples * params.n
                bar.update(len(rows))
        return results

    def _left_pad(self, rows: list[list[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.model.device)
        return input_ids, mask


class NucleusWarper:
    """Temperature, then top-k, then top-p: transformers' warpers in their order and semantics,
    with top-p found among the most likely tokens (grown until they hold more than ``top_p``
    of the mass) instead of a sort of the whole vocabulary.

    A token is dropped when the mass of it and every less likely token is ``<= 1 - top_p``
    (``TopPLogitsWarper``'s rule), so the same tokens survive except where that mass sits
    within float32 rounding of the threshold (transformers sums 49k probabilities in float32;
    seen only with top_p near 1 on flat distributions, a few tokens in 10^4).
    """

    def __init__(self, temperature: float, top_k: int, top_p: float):
        self.temperature, self.top_k, self.top_p = float(temperature), int(top_k), float(top_p)

    def __call__(self, input_ids, scores):
        import torch

        scores = scores / self.temperature
        vocab = scores.size(-1)
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, vocab))[0][..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        probs = scores.softmax(-1)
        k = min(vocab, 256)
        while True:
            top, index = probs.topk(k, dim=-1)
            # Every token outside the candidates must be dropped by the rule above, with margin.
            if k == vocab or bool((top.sum(-1) >= self.top_p + 1e-4).all()):
                break
            k = min(vocab, k * 4)
        # Mass of each candidate and everything less likely, in float64 (the rule's rounding is
        # then transformers' float32 cumsum's alone).
        top64 = top.double()
        rest = probs.double().sum(-1, keepdim=True) - top64.sum(-1, keepdim=True)
        tail = rest + top64.flip(-1).cumsum(-1).flip(-1)
        keep = tail > 1.0 - self.top_p
        keep[..., 0] = True  # min_tokens_to_keep = 1
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, keep)
        return scores.masked_fill(~mask, -float("inf"))
