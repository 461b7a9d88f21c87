"""The study's variants: each a name, what it is, and its overrides of the base config."""

from __future__ import annotations

from dataclasses import dataclass, field

from macpo.eval.sandbox.measure import EARLY_STOP_STEPS


@dataclass(frozen=True)
class Variant:
    name: str
    help: str
    overrides: dict = field(default_factory=dict)
    # The agent whose scores are the variant's result, and at which round (None = the run's last).
    agent: str = "student"
    round: int | None = None


# The two student initialisations the issue compares: the paper's 3 epochs of SFT on the weak labels,
# and an early stop (EARLY_STOP_STEPS, measured on the sandbox: see macpo.eval.sandbox.measure). A
# config may already be one of them; the step cache then makes the duplicate variant free.
_3EP = {"train": {"student_sft": {"max_steps": -1, "epochs": 3}}}
_EARLY = {"train": {"student_sft": {"max_steps": EARLY_STOP_STEPS}}}
# SPAC's pessimism weight, chosen on the demo world's val split (eval.split=val, seed 0, T=3) over the
# sweep {0.1, 0.5, 1} (theory gives no value for this scale): final student combined 0.264 / 0.297 /
# 0.257 at alpha 0.1 / 0.5 / 1.
_SELF_PLAY_ALPHA = 0.5

VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("naive-w2s", "naive weak-to-strong: SFT on the weak labels with the config's budget (train.student_sft; "
            "MACPO's round-0 student, run with T=0): the baseline of every difference", {"T": 0}, round=0),
    Variant("naive-w2s-early", f"naive weak-to-strong, early-stopped ({EARLY_STOP_STEPS} SFT steps)", {"T": 0, **_EARLY}, round=0),
    Variant("naive-w2s-3ep", "naive weak-to-strong at 3 epochs (the paper's student initialisation)", {"T": 0, **_3EP}, round=0),
    Variant("macpo", "MACPO as configured"),
    Variant("macpo-early", f"MACPO from the early-stopped student ({EARLY_STOP_STEPS} SFT steps)", _EARLY),
    Variant("macpo-3ep", "MACPO from the 3-epoch student (the paper's procedure)", _3EP),
    Variant("no-mp", "-MP: the student's chosen is its own sample (no mutual positives)", {"mutual_positive": False}),
    Variant("no-hn", "-HN (paper): no negatives, every learner trains SFT/NLL on its positives", {"negative": "none"}),
    Variant("self-neg", "own-sample negative: rejected = the learner's second plain sample (SPIN-like, not -HN)",
            {"negative": "self"}),
    Variant("no-iw", "-IW: teachers are not updated", {"update_teachers": False}),
    Variant("ref-previous", "MACPO with the DPO reference = each agent's start-of-round policy (standard DPO) instead "
            "of its pretrained base (what the paper's released code does)", {"train": {"dpo": {"ref": "previous"}}}),
    Variant("k1", "K=1 weak teacher", {"K": 1}),
    Variant("k2", "K=2 weak teachers", {"K": 2}),
    Variant("k3", "K=3 weak teachers", {"K": 3}),
    Variant("oracle-chosen", "the student's chosen = the gold-best teacher candidate (upper bound on the filter)",
            {"chosen_rule": "oracle"}),
    Variant("random-chosen", "the student's chosen = a random teacher's candidate (what the filter adds over chance)",
            {"chosen_rule": "random"}),
    Variant("spin", "SPIN on the offline D_w pairs (student only)", {"method": "spin"}),
    Variant("spac", f"SPAC (alpha {_SELF_PLAY_ALPHA}) on the offline D_w pairs (student only)",
            {"method": "spac", "train": {"dpo": {"alpha": _SELF_PLAY_ALPHA}}}),
    Variant("dpo", "plain iterated DPO on the offline D_w pairs (student only)", {"method": "dpo"}),
    Variant("pretrained", "the pretrained student before any alignment (the run's pretrained-student agent)",
            {"T": 0}, agent="pretrained", round=0),
    Variant("gold-ceiling", "the student SFT'd on gold responses with the naive budget (the run's ceiling agent)",
            {"T": 0}, agent="ceiling", round=0),
]}
# DPO learning rates to choose train.dpo.lr on val (issue 21): not in the default matrix.
LR_VARIANTS = {f"dpo-lr-{lr:.0e}".replace("e-0", "e-"): lr for lr in (1e-4, 3e-4, 1e-3)}
VARIANTS.update({name: Variant(name, f"MACPO with DPO lr {lr:g} (for choosing train.dpo.lr on val)",
                               {"train": {"dpo": {"lr": lr}}}) for name, lr in LR_VARIANTS.items()})
BASELINE = "naive-w2s"
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in LR_VARIANTS]
