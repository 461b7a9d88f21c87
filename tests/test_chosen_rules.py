"""The student's chosen-response rules on hand-written candidates: familiarity, oracle, random."""

import pyarrow as pa
import pytest
from test_pairing import negatives, round_rows, candidates

from macpo import config as config_mod
from macpo.builder.pairing import PairingError, macpo_pairs
from macpo.errors import UserError

PIDS = [f"p{i}" for i in range(40)]


def _cands():
    # teacher-0 is always the most familiar (ppl 1), teacher-2 the least (ppl 3)
    return candidates([r for pid in PIDS for r in round_rows(pid, [1.0, 2.0, 3.0])])


def _gold(cands, best="teacher-2"):
    ids = cands.column("candidate_id").to_pylist()
    return pa.table({"candidate_id": ids, "gold": [1.0 if f"/{best}/" in i else 0.0 for i in ids]})


def _chosen(pairing):
    return pairing["student"].column("chosen_agent").to_pylist()


def test_familiarity_is_the_default_and_picks_the_lowest_perplexity():
    c = _cands()
    assert set(_chosen(macpo_pairs(c, negatives(PIDS), round_=2))) == {"teacher-0"}


def test_oracle_picks_the_gold_best_candidate_and_ties_by_familiarity():
    c = _cands()
    p = macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="oracle", gold=_gold(c))
    assert set(_chosen(p)) == {"teacher-2"}
    assert p["student"].column("chosen_ppl").to_pylist() == [3.0] * len(PIDS)
    # everyone equally good: the familiar candidate wins the tie
    flat = pa.table({"candidate_id": c.column("candidate_id"), "gold": [0.5] * c.num_rows})
    assert set(_chosen(macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="oracle", gold=flat))) == {"teacher-0"}
    # teachers' pairs do not depend on the rule
    base = macpo_pairs(c, negatives(PIDS), round_=2)
    assert p["teacher-1"].equals(base["teacher-1"])


def test_oracle_without_gold_is_a_bug_not_a_guess():
    c = _cands()
    with pytest.raises(PairingError, match="gold"):
        macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="oracle")
    partial = _gold(c).slice(0, 10)
    with pytest.raises(PairingError, match="no gold score"):
        macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="oracle", gold=partial)
    with pytest.raises(PairingError, match="chosen_rule"):
        macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="best")


def test_random_is_seeded_per_prompt_and_ignores_perplexity():
    c = _cands()
    a = _chosen(macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="random", rule_seed=0))
    again = _chosen(macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="random", rule_seed=0))
    other = _chosen(macpo_pairs(c, negatives(PIDS), round_=2, chosen_rule="random", rule_seed=1))
    assert a == again and a != other
    assert set(a) == {"teacher-0", "teacher-1", "teacher-2"}  # 40 prompts: every teacher gets picked
    # permuting the perplexities does not move a random pick
    flipped = candidates([r for pid in PIDS for r in round_rows(pid, [3.0, 2.0, 1.0])])
    assert _chosen(macpo_pairs(flipped, negatives(PIDS), round_=2, chosen_rule="random", rule_seed=0)) == a


def test_config_refuses_oracle_without_a_gold_reward():
    base = {"K": 1, "teachers": ["t"], "student": "s"}
    with pytest.raises(UserError, match="oracle"):
        config_mod.from_dict({**base, "chosen_rule": "oracle"})
    with pytest.raises(UserError, match="chosen_rule"):
        config_mod.from_dict({**base, "chosen_rule": "best"})
    assert config_mod.from_dict({**base, "chosen_rule": "oracle", "world": {"seed": 0}}).chosen_rule == "oracle"
    assert config_mod.from_dict(base).chosen_rule == "familiarity"
