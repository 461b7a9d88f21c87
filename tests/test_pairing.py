"""Pairing rules on hand-written tables: MACPO, -MP, -HN, ties, missing inputs, SPAC/SPIN."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from macpo.builder.pairing import (
    PairingError,
    attach_familiarity,
    macpo_pairs,
    pair_ids,
    positives_sft,
    ppl_under,
    self_play_pairs,
    teacher_order,
)
from macpo.schema import conform, core_schema

TEACHERS = ["teacher-0", "teacher-1", "teacher-2"]


def user(text):
    return [{"role": "user", "content": text}]


def bot(text):
    return [{"role": "assistant", "content": text}]


def cand(pid, agent, text, fam=None, idx=0, round_=2, seed=7):
    return {
        "candidate_id": f"{pid}/{agent}/{idx}",
        "prompt_id": pid,
        "round": round_,
        "agent": agent,
        "sample_index": idx,
        "prompt": user(f"question {pid}"),
        "response": bot(text),
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "max_new_tokens": 16,
        "seed": seed,
        "familiarity": [{"scorer": s, "ppl": v} for s, v in (fam or {}).items()],
    }


def candidates(rows):
    return conform(pa.Table.from_pylist(rows), "candidates", "test candidates")


def negatives(pids, agents=("student", *TEACHERS)):
    rows = [
        {
            "example_id": f"{pid}/{a}-neg",
            "prompt_id": pid,
            "round": 0,
            "agent": a,
            "prompt": user(f"question {pid}"),
            "completion": bot(f"bad {a} {pid}"),
            "source_agent": f"{a}-neg",
        }
        for pid in pids
        for a in agents
    ]
    return conform(pa.Table.from_pylist(rows), "sft", "test negatives")


def round_rows(pid, teacher_ppl, *, student_fam=None, extra_samples=False):
    """Candidates for one prompt: the student plus three teachers with the given student PPLs."""
    rows = [cand(pid, "student", f"student says {pid}", student_fam or {"student": 3.0, "teacher-0": 11.0}, seed=1)]
    for k, ppl in enumerate(teacher_ppl):
        rows.append(cand(pid, f"teacher-{k}", f"t{k} says {pid}", {"student": ppl, f"teacher-{k}": 2.0}, seed=10 + k))
    if extra_samples:
        rows += [cand(pid, a, f"{a} again {pid}", idx=1) for a in ("student", *TEACHERS)]
    return rows


def column(table, name):
    return table.column(name).to_pylist()


def text(messages_column):
    return [m[-1]["content"] for m in messages_column]


def test_macpo_student_takes_least_perplexing_teacher_and_teachers_take_student():
    cands = candidates(round_rows("p2", [5.0, 4.0, 9.0]) + round_rows("p1", [1.5, 8.0, 2.5]))
    result = macpo_pairs(cands, negatives(["p1", "p2"]))
    assert set(result) == {"student", *TEACHERS} and result.dropped == []

    student = result["student"]
    assert student.schema == core_schema("pairs")  # no all-null sparse columns (ref log-probs, axis)
    assert column(student, "prompt_id") == ["p1", "p2"]  # sorted, whatever the input order
    assert text(column(student, "chosen")) == ["t0 says p1", "t1 says p2"]
    assert column(student, "chosen_agent") == ["teacher-0", "teacher-1"]
    assert column(student, "chosen_ppl") == [1.5, 4.0]
    assert column(student, "seed") == [10, 11]  # the chosen candidate's sampling provenance
    assert text(column(student, "rejected")) == ["bad student p1", "bad student p2"]
    assert column(student, "rejected_agent") == ["student-neg", "student-neg"]
    assert set(column(student, "pair_type")) == {"mutual-positive"}
    assert set(column(student, "round")) == {2} and set(column(student, "agent")) == {"student"}
    assert column(student, "prompt") == [user("question p1"), user("question p2")]

    teacher = result["teacher-0"]
    assert text(column(teacher, "chosen")) == ["student says p1", "student says p2"]
    assert column(teacher, "chosen_agent") == ["student", "student"]
    assert column(teacher, "chosen_ppl") == [11.0, 11.0]  # student's response under teacher-0
    assert column(result["teacher-1"], "chosen_ppl") == [None, None]  # never scored by teacher-1
    assert text(column(teacher, "rejected")) == ["bad teacher-0 p1", "bad teacher-0 p2"]
    assert column(teacher, "rejected_agent") == ["teacher-0-neg"] * 2
    assert column(teacher, "seed") == [1, 1]


def test_pair_ids_are_deterministic_unique_and_order_independent():
    rows = round_rows("p1", [1.0, 2.0, 3.0]) + round_rows("p2", [3.0, 2.0, 1.0])
    a = macpo_pairs(candidates(rows), negatives(["p1", "p2"]))
    b = macpo_pairs(candidates(rows[::-1]), negatives(["p2", "p1"]))
    for learner in a:
        assert a[learner].equals(b[learner])
    ids = [i for t in a.values() for i in column(t, "pair_id")]
    assert len(set(ids)) == len(ids) == 8
    assert column(a["student"], "pair_id") == pair_ids(2, "student", pa.array(["p1", "p2"])).to_pylist()
    assert pair_ids(3, "student", pa.array(["p1"])) != pair_ids(2, "student", pa.array(["p1"]))


def test_ties_go_to_the_lowest_teacher_index_in_natural_order():
    # teacher-1 and teacher-2 tie at the minimum; teacher-1 wins in either input order.
    rows = round_rows("p1", [3.0, 2.0, 2.0])
    for ordered in (rows, rows[::-1]):
        student = macpo_pairs(candidates(ordered), negatives(["p1"]))["student"]
        assert column(student, "chosen_agent") == ["teacher-1"]
    # Natural order: teacher-2 ranks before teacher-10 although "teacher-10" < "teacher-2" as text.
    rows = [cand("p1", "student", "s", {"student": 1.0}), cand("p1", "teacher-10", "x", {"student": 2.0}),
            cand("p1", "teacher-2", "y", {"student": 2.0})]
    cands = candidates(rows)
    assert teacher_order(cands) == ["teacher-2", "teacher-10"]
    negs = negatives(["p1"], ("student", "teacher-2", "teacher-10"))
    assert column(macpo_pairs(cands, negs)["student"], "chosen_agent") == ["teacher-2"]
    # An explicit teacher list sets the tie-break order.
    pairs = macpo_pairs(cands, negs, teachers=["teacher-10", "teacher-2"])
    assert column(pairs["student"], "chosen_agent") == ["teacher-10"]


def test_without_mutual_positives_the_student_keeps_its_own_sample():
    cands = candidates(round_rows("p1", [1.0, 2.0, 3.0], student_fam={"student": 3.5}))
    result = macpo_pairs(cands, negatives(["p1"]), mutual_positive=False)
    student = result["student"]
    assert text(column(student, "chosen")) == ["student says p1"]
    assert column(student, "pair_type") == ["self-positive"]
    assert column(student, "chosen_ppl") == [3.5]
    assert column(student, "rejected_agent") == ["student-neg"]
    # Teachers still learn the student's sample.
    assert column(result["teacher-2"], "pair_type") == ["mutual-positive"]
    assert column(result["teacher-2"], "chosen_agent") == ["student"]


def test_paper_minus_hn_trains_on_positives_only():
    cands = candidates(round_rows("p1", [1.0, 2.0, 3.0]))
    result = macpo_pairs(cands, None, negative="none")
    sft = {learner: positives_sft(table) for learner, table in result.items()}
    assert text(column(sft["student"], "completion")) == ["t0 says p1"]
    assert column(sft["student"], "source_agent") == ["teacher-0"]
    assert text(column(sft["teacher-1"], "completion")) == ["student says p1"]
    assert set(sft["student"].column_names) >= {"prompt", "completion", "example_id"}
    assert "rejected" not in sft["student"].column_names


def test_own_sample_contrast_rejected_is_the_learners_second_plain_sample():
    cands = candidates(round_rows("p1", [1.0, 2.0, 3.0], extra_samples=True))
    result = macpo_pairs(cands, None, negative="self")
    for learner, table in result.items():
        assert text(column(table, "rejected")) == [f"{learner} again p1"]
        assert column(table, "rejected_agent") == [learner]
    assert column(result["student"], "chosen_agent") == ["teacher-0"]
    # Sample 1 is required under -HN.
    with pytest.raises(PairingError, match="sample-1 candidate of student"):
        macpo_pairs(candidates(round_rows("p1", [1.0, 2.0, 3.0])), None, negative="self")
    with pytest.raises(PairingError, match="needs a hard_negatives table"):
        macpo_pairs(cands, None)


def test_missing_inputs_raise_by_default_or_drop_from_every_subset():
    rows = round_rows("p1", [1.0, 2.0, 3.0]) + round_rows("p2", [1.0, 2.0, 3.0]) + round_rows("p3", [1.0, 2.0, 3.0])
    rows = [r for r in rows if not (r["prompt_id"] == "p2" and r["agent"] == "teacher-2")]
    cands = candidates(rows)
    negs = negatives(["p1", "p2", "p3", "p4"])
    negs = negs.filter(pc.invert(pc.and_(pc.equal(negs["prompt_id"], "p3"), pc.equal(negs["agent"], "student"))))
    with pytest.raises(PairingError, match=r"3 prompt\(s\) lack inputs.*p2, p3, p4"):
        macpo_pairs(cands, negs)
    result = macpo_pairs(cands, negs, strict=False)
    assert result.dropped == ["p2", "p3", "p4"]
    for table in result.values():
        assert column(table, "prompt_id") == ["p1"]


def test_unscored_teacher_candidates_and_mixed_rounds_are_errors():
    rows = round_rows("p1", [1.0, 2.0, 3.0])
    rows[2]["familiarity"] = [{"scorer": "teacher-1", "ppl": 1.0}]
    with pytest.raises(PairingError, match="no familiarity score from 'student'"):
        macpo_pairs(candidates(rows), negatives(["p1"]))
    rows = round_rows("p1", [1.0, 2.0, 3.0]) + [cand("p2", "student", "x", round_=3)]
    with pytest.raises(PairingError, match="one round"):
        macpo_pairs(candidates(rows), negatives(["p1", "p2"]))
    rows = round_rows("p1", [1.0, 2.0, 3.0]) + [cand("p1", "teacher-0", "dup", {"student": 1.0})]
    with pytest.raises(PairingError, match="more than one row"):
        macpo_pairs(candidates(rows), negatives(["p1"]))


def test_ppl_under_reads_the_named_scorer_or_null():
    cands = candidates([cand("p1", "student", "a", {"student": 2.0, "teacher-0": 5.0}), cand("p1", "teacher-0", "b", {})])
    assert ppl_under(cands, "teacher-0").to_pylist() == [5.0, None]
    assert ppl_under(cands, "student").to_pylist() == [2.0, None]


def preferences():
    rows = [
        {"pair_id": f"h{pid}", "prompt_id": pid, "round": 0, "agent": "default", "pair_type": "human",
         "prompt": user(f"question {pid}"), "chosen": bot(f"good {pid}"), "rejected": bot(f"poor {pid}"),
         "chosen_agent": "human", "rejected_agent": "human", "ref_chosen_logps": -3.0}
        for pid in ("p2", "p1", "p3")
    ]
    return conform(pa.Table.from_pylist(rows), "pairs", "test preferences")


def test_spac_triples_add_the_policys_own_sample():
    cands = candidates([cand("p1", "policy", "mine p1", seed=5), cand("p2", "policy", "mine p2", seed=5),
                        cand("p3", "policy", "mine p3", idx=1), cand("p3", "other", "theirs")])
    with pytest.raises(PairingError, match=r"1 prompt\(s\).*p3"):
        self_play_pairs(preferences(), cands, agent="policy")
    result = self_play_pairs(preferences(), cands, agent="policy", strict=False)
    assert result.dropped == ["p3"]
    spac = result["policy"]
    assert spac.schema == core_schema("pairs")
    assert column(spac, "prompt_id") == ["p1", "p2"]
    assert text(column(spac, "chosen")) == ["good p1", "good p2"]
    assert text(column(spac, "rejected")) == ["poor p1", "poor p2"]
    assert text(column(spac, "self_response")) == ["mine p1", "mine p2"]
    assert column(spac, "self_agent") == ["policy", "policy"]
    assert column(spac, "pair_type") == ["spac", "spac"]
    assert column(spac, "round") == [2, 2] and column(spac, "seed") == [5, 5]
    assert "ref_chosen_logps" not in spac.column_names  # the reference is the new policy: not the preferences' logps
    assert column(spac, "pair_id") == pair_ids(2, "policy", pa.array(["hp1", "hp2"])).to_pylist()


def test_spin_rejects_the_policys_own_sample():
    cands = candidates([cand(p, "policy", f"mine {p}") for p in ("p1", "p2", "p3")])
    spin = self_play_pairs(preferences(), cands, agent="policy", pair_type="spin")["policy"]
    assert column(spin, "pair_type") == ["spin"] * 3
    assert text(column(spin, "chosen")) == ["good p1", "good p2", "good p3"]
    assert text(column(spin, "rejected")) == text(column(spin, "self_response")) == ["mine p1", "mine p2", "mine p3"]
    assert column(spin, "rejected_agent") == ["policy"] * 3
    dpo = self_play_pairs(preferences(), cands, agent="policy", pair_type="dpo", round_=2)["policy"]
    assert text(column(dpo, "rejected")) == ["poor p1", "poor p2", "poor p3"]
    with pytest.raises(PairingError, match="'spac', 'spin' or 'dpo'"):
        self_play_pairs(preferences(), cands, agent="policy", pair_type="ipo")
    with pytest.raises(PairingError, match="expected rows of round 3"):
        self_play_pairs(preferences(), cands, agent="policy", round_=3)


def test_attach_familiarity_merges_scores_into_sorted_lists():
    cands = candidates([cand("p1", "student", "a", {"teacher-0": 4.0}), cand("p1", "teacher-0", "b"),
                        cand("p2", "teacher-0", "c")])
    scores = pa.table({"candidate_id": ["p1/teacher-0/0", "p1/student/0", "p2/teacher-0/0"],
                       "scorer": ["student", "student", "student"], "ppl": [2.5, 1.5, 3.5]})
    out = attach_familiarity(cands, scores)
    assert out.schema == cands.schema
    assert column(out, "familiarity") == [
        [{"scorer": "student", "ppl": 1.5}, {"scorer": "teacher-0", "ppl": 4.0}],
        [{"scorer": "student", "ppl": 2.5}],
        [{"scorer": "student", "ppl": 3.5}],
    ]
    assert ppl_under(out, "student").to_pylist() == [1.5, 2.5, 3.5]
    with pytest.raises(PairingError, match="same scorer"):
        attach_familiarity(out, scores.slice(0, 1))
    bare = attach_familiarity(cands.drop_columns(["familiarity"]), scores)  # freshly generated candidates
    assert ppl_under(bare, "student").to_pylist() == [1.5, 2.5, 3.5] and ppl_under(bare, "teacher-0").null_count == 3
    with pytest.raises(PairingError, match="1 unknown candidate"):
        attach_familiarity(cands, pa.table({"candidate_id": ["nope"], "scorer": ["student"], "ppl": [1.0]}))


def test_round_argument_is_checked_against_the_candidates():
    cands = candidates(round_rows("p1", [1.0, 2.0, 3.0]))
    assert set(column(macpo_pairs(cands, negatives(["p1"]), round_=2)["student"], "round")) == {2}
    with pytest.raises(PairingError, match="expected rows of round 1"):
        macpo_pairs(cands, negatives(["p1"]), round_=1)
