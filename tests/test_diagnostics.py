"""Pair diagnostics on hand-made candidates and pairs tables."""

import json

import pyarrow as pa
import pytest

from macpo.builder.pairing import attach_familiarity
from macpo.eval import diagnostics as dg


def msg(text):
    return [{"role": "assistant", "content": text}]


def test_attach_gold_scores_the_last_message_by_prompt_meta():
    t = pa.table({"prompt_id": ["p1", "p2", "p3"], "chosen": [msg("4"), msg("5"), msg("4")]})
    metas = {"p1": {"answer": "4"}, "p2": {"answer": "4"}}
    out = dg.attach_gold(t, "chosen", metas, lambda m, text: float(text == m["answer"]), "chosen_gold")
    assert out.column("chosen_gold").to_pylist() == [1.0, 0.0, None]


def test_pair_gold_means_better_and_identical():
    pairs = pa.table({
        "chosen": [msg("a"), msg("b"), msg("c"), msg("d")],
        "rejected": [msg("x"), msg("b"), msg("y"), msg("z")],
        "chosen_gold": [1.0, 0.5, 0.0, 0.5],
        "rejected_gold": [0.0, 0.5, 1.0, 0.25],
    })
    d = dg.pair_gold(pairs)
    assert d["n"] == 4
    assert d["chosen_gold"] == pytest.approx(0.5) and d["rejected_gold"] == pytest.approx(0.4375)
    assert d["chosen_better"] == pytest.approx(0.5)  # pairs 0 and 3; the tie does not count
    assert d["identical"] == pytest.approx(0.25)
    assert dg.pair_gold(pairs.slice(0, 0))["chosen_better"] is None


def _candidates():
    """Three prompts, two teachers; gold and student perplexity by hand."""
    rows = [
        # prompt, agent, gold, ppl under student
        ("p1", "teacher-0", 1.0, 2.0), ("p1", "teacher-1", 0.0, 3.0),   # filter right
        ("p2", "teacher-0", 0.0, 1.5), ("p2", "teacher-1", 1.0, 4.0),   # filter wrong
        ("p3", "teacher-0", 0.5, 2.5), ("p3", "teacher-1", 0.0, 5.0),   # nobody correct
    ]
    t = pa.table({
        "candidate_id": [f"{p}-{a}" for p, a, _, _ in rows] + ["p1-student", "p1-student-neg"],
        "prompt_id": [r[0] for r in rows] + ["p1", "p1"],
        "agent": [r[1] for r in rows] + ["student", "student-neg"],
        "sample_index": pa.array([0] * 8, pa.int32()),
        "gold": [r[2] for r in rows] + [1.0, 0.0],
    })
    scores = pa.table({"candidate_id": [f"{p}-{a}" for p, a, _, _ in rows], "scorer": ["student"] * 6,
                       "ppl": [r[3] for r in rows]})
    return attach_familiarity(t, scores)


def test_filter_accuracy_against_random_and_oracle():
    cands = _candidates()
    pairs = pa.table({"prompt_id": ["p1", "p2", "p3"], "chosen_agent": ["teacher-0", "teacher-0", "teacher-0"]})
    acc = dg.filter_accuracy(cands, pairs)
    assert acc["prompts"] == 3 and acc["prompts_with_correct"] == 2
    assert acc["filter_correct"] == pytest.approx(0.5)
    assert acc["random_correct"] == pytest.approx(0.5)  # one of two candidates correct on p1 and p2
    assert acc["oracle_correct"] == 1.0
    assert acc["filter_gold"] == pytest.approx(0.5)
    assert acc["random_gold"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert acc["oracle_gold"] == pytest.approx(2.5 / 3)
    assert dg.filter_picks(pairs) == {"teacher-0": 3}


def test_spearman_with_ties_and_degenerate_inputs():
    assert dg.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert dg.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Average ranks for ties: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4) -> r = 0.9487
    assert dg.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert dg.spearman([1, 2], [1, 2]) is None
    assert dg.spearman([1, 1, 1], [1, 2, 3]) is None
    assert dg.spearman([1, 2, float("nan"), 3], [3, 2, 9, 1]) == pytest.approx(-1.0)


def test_ppl_gold_spearman_over_scored_candidates():
    res = dg.ppl_gold_spearman(_candidates())
    assert res["n"] == 6  # the student's own candidates carry no student perplexity
    # ppl 1.5,2,2.5,3,4,5 -> gold 0,1,.5,0,1,0
    assert res["spearman"] == pytest.approx(dg.spearman([1.5, 2, 2.5, 3, 4, 5], [0, 1, .5, 0, 1, 0]))


def test_dpo_rewards_from_trainer_metrics():
    metrics = json.loads(json.dumps({
        "reward_history": [{"rewards/accuracies": 0.5, "rewards/margins": 0.1},
                           {"rewards/accuracies": 1.0, "rewards/margins": 0.3}],
        "final_step": {"rewards/accuracies": 1.0, "rewards/margins": 0.3},
    }))
    d = dg.dpo_rewards(metrics)
    assert d["accuracy_mean"] == pytest.approx(0.75) and d["margin_mean"] == pytest.approx(0.2)
    assert d["accuracy_last"] == 1.0 and d["steps"] == 2
    old = dg.dpo_rewards({"final_step": {"rewards/accuracies": 0.9, "rewards/margins": 0.2}})
    assert old["accuracy_last"] == 0.9 and old["accuracy_mean"] is None
    assert dg.dpo_rewards(None)["steps"] == 0 and dg.dpo_rewards({"final_step": {}})["accuracy_last"] is None


def test_positives_only_rounds_report_the_chosen_side():
    sft = pa.table({"prompt_id": ["p1", "p2"], "completion": [msg("a"), msg("b")], "source_agent": ["teacher-0", "teacher-1"]})
    pairs = dg.as_pairs(sft)
    assert dg.filter_picks(pairs) == {"teacher-0": 1, "teacher-1": 1}
    pairs = pairs.append_column("chosen_gold", pa.array([1.0, 0.0]))
    d = dg.pair_gold(pairs)
    assert d["chosen_gold"] == pytest.approx(0.5) and d["rejected_gold"] is None and d["chosen_better"] is None
