"""The MACPO paper's procedure as settings, and a run config's deviations from it.

The values are those of the paper's released scripts (LLaMA-Factory 0.5.3 command lines and
defaults; Lyu et al., ICLR 2025, arXiv 2410.07672). Settings the paper leaves open (the weak
teachers' training, the reward models) are not listed. :func:`deviations` compares a run config
with them; the report ends with the table. A deviation's reason is the measurement that
motivated it (:data:`REASONS`), or says plainly that none was made.
"""

from __future__ import annotations

from typing import Any

# setting (dotted path into RunConfig.to_dict()) -> the paper's value
PAPER: dict[str, Any] = {
    "K": 3,
    "T": 3,
    "sampling.temperature": 0.95,
    "sampling.top_p": 0.7,
    "sampling.top_k": 50,
    "sampling.n": 1,
    "sampling.max_new_tokens": 512,
    # The release's only generation path samples (LLaMA-Factory --predict_with_generate, its defaults).
    "weak_labels": "sampled",
    "train.student_sft.epochs": 3.0,
    "train.student_sft.lr": 5e-5,
    "train.student_sft.lr_scheduler": "cosine",
    "train.student_sft.lora_r": 8,
    "train.student_sft.batch_size": 32,
    "train.student_neg_sft.epochs": 1.0,
    "train.teacher_neg_sft.epochs": 1.0,
    "train.student_neg_sft.lr": 5e-5,
    "train.student_neg_sft.lora_r": 8,
    "train.dpo.loss": "dpo-nll",  # its NLL is the paper's: per chosen answer, length-averaged (dpo_ftx)
    "train.dpo.beta": 0.1,
    "train.dpo.nll_weight": 0.2,
    "train.dpo.epochs": 1.0,
    "train.dpo.lr": 1e-5,
    "train.dpo.lr_scheduler": "cosine",
    "train.dpo.lora_r": 8,
    "train.dpo.batch_size": 16,
    "train.dpo.ref": "base",
    "negative": "hard",
    "mutual_positive": True,
    "update_teachers": True,
    "chosen_rule": "familiarity",
    "eval.greedy": False,
}

# Why the sandbox demo departs from the paper, with what was measured (validation split unless
# said otherwise). Keyed like PAPER; a key missing here is reported as "no measurement".
REASONS: dict[str, str] = {
    "sampling.max_new_tokens": "the longest gold answer is 11 tokens + EOS; a response still running at 16 tokens "
                               "has already broken the protocol, so longer generation only costs time",
    "train.student_sft.lora_r": "LoRA r=8 on q/v (3 epochs, val): at lr 2e-3 the student never learnt to end its turn "
                                "(protocol 0.00); at 1e-2 / 3e-2 gold SFT reached combined 0.387 / 0.502 (protocol "
                                "0.58 / 0.88, refusals 0.00) against 0.723 for full fine-tuning at 1e-3; r=8 on every "
                                "projection: 0.623, refusals 0.08. Models of ~1M parameters need full fine-tuning",
    "train.student_neg_sft.lora_r": "as train.student_sft.lora_r (the negative agent continues the positive one)",
    "train.dpo.lora_r": "as train.student_sft.lora_r: the DPO rounds continue the full fine-tune",
    "train.student_sft.lr": "chosen on val, per axis (the demo config's axes section): helpful axis 3e-4 (naive "
                            "student helpful 0.315 / 0.725 / 0.590 and gold ceiling - / 0.980 / 0.920 at 1e-4 / 3e-4 / "
                            "1e-3); harmless axis 1e-3 (10 unlabelled targets: naive 0.751 / 0.825 and ceiling 0.837 / "
                            "1.000 at 5e-4 / 1e-3; at 3e-4 both stay undertrained, 0.68-0.77). 5e-5 is the paper's rate "
                            "for LoRA on a 70B model",
    "train.student_neg_sft.lr": "the rate of the earlier sandbox (1e-3): the negative agent must move away from the "
                                "positive one within its one epoch",
    "train.student_sft.batch_size": "measured on val (helpful axis, seed 0): at the paper's 32 the naive student "
                                    "reaches 0.685 (64: 0.725), the ceiling 0.975 (0.990), MACPO's student 0.690 after "
                                    "round 3 (0.730); every gate passes at both. 64 keeps the better baseline at half "
                                    "the optimizer steps; epochs are the paper's",
    "train.dpo.batch_size": "measured on val (helpful axis, seed 0): at the paper's 16 MACPO's student ends round 3 "
                            "at 0.710 (32: 0.730) and the best teacher at 0.550 (0.565); every gate passes at both. 32 "
                            "halves the optimizer steps; one epoch as in the paper",
    "train.dpo.lr": "chosen on val (study variants dpo-lr-1e-4 / 3e-4 / 1e-3, helpful axis, seed 0): final student "
                    "helpful 0.575 / 0.510 / 0.475 against the naive 0.570; at 1e-3 the dpo-sanity gate failed on the "
                    "harmless axis (one DPO round on D_w raised over-refusal 0.000 -> 0.381). 1e-5 is the paper's rate "
                    "for LoRA on a 70B model",
    "eval.greedy": "greedy decoding gives one deterministic score per model. Measured on val (harmless axis, seed "
                   "0): scoring with samples at the paper's settings instead moves every score by <= 0.03 (student "
                   "round 0 0.801 -> 0.786, round 3 0.776 -> 0.775; ceiling 0.990 -> 0.985; teachers 0.835 / 0.879 / "
                   "0.796 -> 0.840 / 0.879 / 0.767) and changes no gate's verdict",
}


def _get(data: dict, path: str):
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(b)))
    return a == b


def deviations(cfg_dict: dict, reasons: dict[str, str] | None = None) -> list[dict]:
    """Rows ``{"setting", "paper", "ours", "reason"}`` for every setting of :data:`PAPER` that
    ``cfg_dict`` (``RunConfig.to_dict()``) sets differently."""
    reasons = REASONS if reasons is None else reasons
    rows = []
    for path, paper in PAPER.items():
        ours = _get(cfg_dict, path)
        if ours is None or _same(ours, paper):
            continue
        rows.append({"setting": path, "paper": paper, "ours": ours, "reason": reasons.get(path, "no measurement: not justified yet")})
    return rows
