"""The methods a run trains with, their families, and the rules that pick a pair's chosen response.

The config validates against this table, the plan and the builder branch on it, and eval and
the report describe runs with it. A new method is one line here.
"""

from __future__ import annotations

# method -> family. weak-to-strong: the student learns from K weak teachers' labels and needs
# teachers. self-play: the student alone, on the offline D_w pairs (`data`), no teachers; each
# trains the `dpo` stage with the loss of its name (SPAC with alpha 0 is iterated DPO).
FAMILY = {
    "macpo": "weak-to-strong",
    "naive-w2s": "weak-to-strong",
    "spac": "self-play",
    "spin": "self-play",
    "dpo": "self-play",
}
METHODS = tuple(FAMILY)
WEAK_TO_STRONG = frozenset(m for m, family in FAMILY.items() if family == "weak-to-strong")
SELF_PLAY = frozenset(m for m, family in FAMILY.items() if family == "self-play")

# How the student's chosen response is picked among the teachers' candidates (config `chosen_rule`).
CHOSEN_RULES = ("familiarity", "oracle", "random")


def round0_start(method: str) -> str:
    """What a run's round-0 student is, as summaries and reports name it."""
    # Self-play methods start from SFT on D_w's chosen side, not from weak labels.
    return "naive weak-to-strong" if method in WEAK_TO_STRONG else "SFT on the offline pairs' chosen side"
