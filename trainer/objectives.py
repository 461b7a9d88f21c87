"""Objectives TRL does not ship, as small subclasses of TRL's ``DPOTrainer``.

- ``StoredRefDPOTrainer``: TRL's DPO, except that reference log-probs already present in the
  dataset (``ref_chosen_logps``/``ref_rejected_logps``, written by the builder) are used as
  they are. TRL 1.16 with ``precompute_ref_log_probs=True`` always recomputes them and then
  concatenates a second copy of the columns; with the columns present we skip that pass, so
  no reference model is loaded or run at all.
- ``SPACTrainer``: SPAC's practical loss (docs/algorithms.md, SPAC) with reference = the starting
  policy π_t:

      DPO(y⁺ ≻ y⁻) + α · ½ Σ_{ỹ ∈ {y⁺, y⁻}} −log σ(β [h(ỹ) − h(y′)]),   h = log π_θ − log π_t

  y′ (``self_response``) is tokenised as a third completion and the collator stacks the batch
  as [chosen; rejected; self], so one policy forward and one reference forward cover all three.
  α = 0 is exactly TRL's sigmoid DPO; SPIN is the DPO trainer on (y⁺, y′) (see data.py).
- ``DPONLLTrainer``: MACPO's DPO + γ · NLL, with the NLL as the paper's code computes it
  (LLaMA-Factory 0.5.3 ``dpo_ftx``): each chosen answer's mean token NLL, then the batch mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOTrainer
from trl.data_utils import is_conversational
from trl.trainer.dpo_trainer import DataCollatorForPreference

from macpo.errors import UserError
from macpo.tokens import common_prefix_len

_REF_PAIR = ("ref_chosen_logps", "ref_rejected_logps")


class StoredRefDPOTrainer(DPOTrainer):
    """DPOTrainer that trusts reference log-probs already in the dataset."""

    _ref_columns: tuple[str, ...] = _REF_PAIR

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        if all(c in dataset.column_names for c in self._ref_columns):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)


def per_response_nll(log_probs: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """−(1/|y⁺ᵢ|) Σₜ log π(y⁺ᵢₜ) for every chosen row of a [chosen; rejected] batch.

    ``log_probs``: per-token log-probs of TRL's fused head (positions of the shifted labels, possibly
    with leading virtual-token positions); ``completion_mask``: the collator's, one row per sequence.
    """
    mask = completion_mask[:, 1:]
    per_token = log_probs[:, -mask.size(1):]
    chosen, _ = per_token.chunk(2, dim=0)
    chosen_mask, _ = mask.chunk(2, dim=0)
    chosen_mask = chosen_mask.bool()
    summed = chosen.masked_fill(~chosen_mask, 0.0).sum(dim=1)
    return -summed / chosen_mask.sum(dim=1).clamp(min=1)


class DPONLLTrainer(StoredRefDPOTrainer):
    """Sigmoid DPO + γ · the chosen answer's length-averaged NLL, averaged over the batch.

    Hand-written because TRL has no per-sequence-averaged sft term: its ``loss_type="sft"`` is
    ``-chosen_per_token_logps[chosen_mask].mean()``, one token mean over the whole batch, which
    weights long answers more (and changes with how a batch is split across processes). TRL still
    computes the DPO term; the NLL reads the per-token log-probs of the very policy forward TRL
    runs for it (seen through a forward hook), so there is no second forward.
    """

    def __init__(self, *args, nll_weight: float, **kwargs):
        args_ = kwargs.get("args")
        if args_ is not None and list(args_.loss_type) != ["sigmoid"]:
            raise UserError("dpo-nll adds its NLL to the sigmoid DPO term only (loss_type must be ['sigmoid'])")
        self.nll_weight = float(nll_weight)
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs, return_outputs):
        # TRL's _compute_loss runs the policy forward first; a later forward through the same module
        # (the reference pass with the adapter disabled, or return_outputs' extra pass) is ignored.
        seen = []
        handle = model.register_forward_hook(lambda _m, _a, output: seen.append(output) if not seen else None)
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            handle.remove()
        loss, outputs = result if return_outputs else (result, None)
        nll = per_response_nll(seen[0].log_probs, inputs["completion_mask"])
        loss = loss + self.nll_weight * nll.mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["nll"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss


def _tokenize(processing_class, prompt, completion) -> list[int]:
    """prompt+completion token ids, the way TRL's DPO tokenises a conversational or text row."""
    if isinstance(prompt, list):
        return processing_class.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    return processing_class(text=prompt + completion)["input_ids"]


@dataclass
class SPACCollator(DataCollatorForPreference):
    """TRL's preference collator plus the third completion: rows are [chosen; rejected; self]."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        pairs = super().torch_call(examples)
        # Reuse TRL's truncation and padding for y': pass it as both sides, keep the first half.
        own = super().torch_call(
            [{"prompt_ids": e["prompt_ids"], "chosen_ids": e["self_ids"], "rejected_ids": e["self_ids"]} for e in examples]
        )
        n = len(examples)
        width = max(pairs["input_ids"].size(1), own["input_ids"].size(1))
        out = {}
        for key, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("completion_mask", 0)):
            a = F.pad(pairs[key], (0, width - pairs[key].size(1)), value=fill)
            b = F.pad(own[key][:n], (0, width - own[key].size(1)), value=fill)
            out[key] = torch.cat([a, b], dim=0)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in pairs:
                out[key] = pairs[key]
        if "ref_self_logps" in examples[0]:
            out["ref_self_logps"] = torch.tensor([e["ref_self_logps"] for e in examples])
        return out


class SPACTrainer(StoredRefDPOTrainer):
    """SPAC = DPO on (y⁺, y⁻) + α · SPIN-shaped pessimism against the policy's own sample y′."""

    _ref_columns = (*_REF_PAIR, "ref_self_logps")

    def __init__(self, *args, alpha: float = 0.5, **kwargs):
        self.alpha = float(alpha)
        args_ = kwargs.get("args")
        if args_ is not None:
            if list(args_.loss_type) != ["sigmoid"] or args_.ld_alpha is not None or args_.use_weighting:
                raise UserError("spac uses the sigmoid DPO term only (no extra loss types, ld_alpha or weighting)")
            if args_.f_divergence_type != "reverse_kl":
                raise UserError("spac supports only the reverse-KL (standard DPO) parameterisation")
        if kwargs.get("data_collator") is None and kwargs.get("processing_class") is not None:
            tok = kwargs["processing_class"]
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            kwargs["data_collator"] = SPACCollator(
                pad_token_id=tok.pad_token_id,
                max_length=args_.max_length if args_ is not None else None,
                truncation_mode=args_.truncation_mode if args_ is not None else "keep_start",
                pad_to_multiple_of=args_.pad_to_multiple_of if args_ is not None else None,
            )
        super().__init__(*args, **kwargs)

    # ---- data ------------------------------------------------------------------------
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "self_ids" in dataset.column_names:  # already prepared (evaluate() calls this again)
            return dataset
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        eos = self._tokenizer.eos_token

        def add_self_ids(example):
            completion = example["self_response"]
            if not is_conversational(example) and not completion.endswith(eos):
                completion = completion + eos  # TRL appends EOS to text completions; match it
            full = _tokenize(processing_class, example["prompt"], completion)
            prompt_ids = example["prompt_ids"]
            cut = common_prefix_len(prompt_ids, full)
            if cut < len(prompt_ids):
                # The prompt tokenises differently before y' than before y⁺/y⁻. Like TRL, the completion
                # starts where the sequences diverge; move the divergent prompt tail into y⁺ and y⁻ so all
                # three sequences stay exactly as tokenised.
                tail = prompt_ids[cut:]
                example["chosen_ids"] = tail + example["chosen_ids"]
                example["rejected_ids"] = tail + example["rejected_ids"]
                example["prompt_ids"] = prompt_ids[:cut]
            example["self_ids"] = full[cut:]
            return example

        return dataset.map(add_self_ids, desc=f"Tokenizing y' in {dataset_name} dataset")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for name in ("self_ids", "ref_self_logps"):
            if name not in self._signature_columns:
                self._signature_columns.append(name)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        if all(c in dataset.column_names for c in self._ref_columns):
            return dataset
        # TRL's precompute pass knows two completions only; SPAC computes its reference on the fly.
        raise UserError("spac: precomputing reference log-probs needs ref_chosen/rejected/self_logps in the data")

    # ---- loss ------------------------------------------------------------------------
    def _sequence_logps(self, model, inputs) -> torch.Tensor:
        """Summed completion log-probs of every row, with TRL's fused LM head."""
        model_kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = inputs["completion_mask"].size(1) - 1
        return outputs.log_probs[:, -seq_len:].sum(dim=1)

    def _reference_logps(self, inputs) -> torch.Tensor:
        if self.precompute_ref_logps:
            return torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"], inputs["ref_self_logps"]])
        ref_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "completion_mask")}
        # TRL's helper returns the rows split in two halves; with three groups, join them back.
        halves = self.compute_ref_log_probs(self.ref_model or self.model, ref_inputs)
        return torch.cat(halves).detach()

    def _compute_loss(self, model, inputs, return_outputs):
        if return_outputs:
            raise NotImplementedError("SPACTrainer does not return model outputs")
        mode = "train" if self.model.training else "eval"
        logps = self._sequence_logps(model, inputs)
        ref_logps = self._reference_logps(inputs).to(logps.device, logps.dtype)
        h_chosen, h_rejected, h_self = (logps - ref_logps).chunk(3, dim=0)

        dpo = -F.logsigmoid(self.beta * (h_chosen - h_rejected))
        pessimism = 0.5 * (
            -F.logsigmoid(self.beta * (h_chosen - h_self)) - F.logsigmoid(self.beta * (h_rejected - h_self))
        )
        loss = (dpo + self.alpha * pessimism).mean()

        gather = self.accelerator.gather_for_metrics
        chosen_logps, rejected_logps, self_logps = logps.detach().chunk(3, dim=0)
        r_chosen, r_rejected, r_self = (self.beta * h.detach() for h in (h_chosen, h_rejected, h_self))
        metrics = {
            "loss/dpo": dpo.detach(),
            "loss/pessimism": pessimism.detach(),
            "rewards/chosen": r_chosen,
            "rewards/rejected": r_rejected,
            "rewards/self": r_self,
            "rewards/accuracies": (r_chosen > r_rejected).float(),
            "rewards/margins": r_chosen - r_rejected,
            "rewards/data_over_self": (0.5 * (r_chosen + r_rejected) - r_self),
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
            "logps/self": self_logps,
        }
        for key, value in metrics.items():
            self._metrics[mode][key].append(gather(value).mean().item())
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
