"""Weak labels as the paper draws them: sampled with the run's `sampling` settings, seeded
(`weak_labels: greedy` decodes them by argmax), and reused as the weak-label teacher's round-1
candidates, as in the release. Pure functions on hand-made tables, plus the shared CI run."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from helpers import msgs
from macpo import config as config_mod
from macpo.builder import pairing
from macpo.builder.round_tables import sft_rows
from macpo.builder.round_tables import weak_labels_as_candidates
from macpo.errors import UserError

SAMPLING = {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_new_tokens": 12, "seed": 99}


def _labels(ids, texts, agent="teacher-0", **sampling) -> pa.Table:
    """A `weak-labels` subset as build_labels writes it (SFT rows for the student, per-row seed)."""
    settings = {k: v for k, v in {**SAMPLING, **sampling}.items() if k != "seed"}
    table = sft_rows([msgs("user", f"q {i}") for i in ids], texts, prompt_ids=ids, agent="student", source_agent=agent,
                      round_=0, sampling=settings)
    return table.append_column("seed", pa.array([1000 + k for k in range(len(ids))], pa.int64()))


# ---- config -------------------------------------------------------------------------------
def test_config_default_is_the_papers_sampled_labels():
    base = {"K": 1, "teachers": ["t"], "student": "s"}
    assert config_mod.from_dict(base).weak_labels == "sampled"
    assert config_mod.from_dict({**base, "weak_labels": "greedy"}).to_dict()["weak_labels"] == "greedy"
    with pytest.raises(UserError, match="weak_labels: 'argmax' is not one of sampled, greedy"):
        config_mod.from_dict({**base, "weak_labels": "argmax"})


# ---- weak labels as round-1 candidates ----------------------------------------------------------
def test_weak_labels_become_candidates_in_q_order_with_their_provenance():
    labels = _labels(["b", "a", "c"], ["label b", "label a", "label c"])
    table = weak_labels_as_candidates(labels, ["a", "b", "c"], agent="teacher-0", round_=1, sampling=SAMPLING)
    rows = table.to_pylist()
    assert [r["prompt_id"] for r in rows] == ["a", "b", "c"]
    assert [r["response"] for r in rows] == [msgs("assistant", f"label {p}") for p in "abc"]
    assert [r["candidate_id"] for r in rows] == [f"r0-teacher-0-{p}-0" for p in "abc"]  # the label's own id
    assert [r["seed"] for r in rows] == [1001, 1000, 1002]  # each keeps the seed it was drawn with
    assert {(r["round"], r["agent"], r["sample_index"], r["temperature"], r["max_new_tokens"]) for r in rows} == {
        (1, "teacher-0", 0, 0.7, 12)}
    assert table.schema.field("familiarity").type == pa.list_(pa.struct([("scorer", pa.string()), ("ppl", pa.float64())]))


@pytest.mark.parametrize("change", [{"temperature": 0.0}, {"top_p": 0.7}, {"top_k": 50}, {"max_new_tokens": 16}])
def test_labels_drawn_otherwise_are_not_reused(change):
    """Greedy labels, or labels sampled with other settings, are not samples round 1 would draw."""
    labels = _labels(["a", "b"], ["x", "y"], **change)
    assert weak_labels_as_candidates(labels, ["a", "b"], agent="teacher-0", round_=1, sampling=SAMPLING) is None


def test_labels_of_another_teacher_are_not_reused():
    labels = _labels(["a", "b"], ["x", "y"], agent="teacher-1")
    assert weak_labels_as_candidates(labels, ["a", "b"], agent="teacher-0", round_=1, sampling=SAMPLING) is None


def test_labels_that_do_not_cover_q_are_refused():
    labels = _labels(["a", "b"], ["x", "y"])
    with pytest.raises(UserError, match="weak-labels holds 2 prompts"):
        weak_labels_as_candidates(labels, ["a", "b", "c"], agent="teacher-0", round_=1, sampling=SAMPLING)


def _fresh(agent: str, ids, texts, round_=1) -> pa.Table:
    from macpo.schema import conform

    n = len(ids)
    return conform(pa.table({
        "candidate_id": [f"r{round_}-{agent}-{p}-0" for p in ids], "prompt_id": list(ids),
        "round": pa.array([round_] * n, pa.int32()), "agent": [agent] * n, "sample_index": pa.array([0] * n, pa.int32()),
        "prompt": [msgs("user", f"q {p}") for p in ids], "response": [msgs("assistant", t) for t in texts],
        **{k: [v] * n for k, v in SAMPLING.items()},
    }), "candidates", "test")


def test_pairing_ranks_reused_labels_like_fresh_samples():
    """The familiarity filter and the pairs treat a reused label as any other teacher candidate."""
    ids = ["a", "b"]
    reused = weak_labels_as_candidates(_labels(ids, ["label a", "label b"]), ids, agent="teacher-0", round_=1,
                                       sampling=SAMPLING)
    candidates = pa.concat_tables([_fresh("student", ids, ["own a", "own b"]), reused,
                                   _fresh("teacher-1", ids, ["t1 a", "t1 b"])])
    ppl = {"r0-teacher-0-a-0": 2.0, "r1-teacher-1-a-0": 5.0, "r0-teacher-0-b-0": 9.0, "r1-teacher-1-b-0": 3.0}
    scores = pa.table({"candidate_id": list(ppl), "scorer": ["student"] * 4, "ppl": list(ppl.values())})
    teacher_scores = pa.table({"candidate_id": ["r1-student-a-0", "r1-student-b-0"] * 2,
                               "scorer": ["teacher-0"] * 2 + ["teacher-1"] * 2, "ppl": [4.0, 4.0, 6.0, 6.0]})
    candidates = pairing.attach_familiarity(candidates, pa.concat_tables([scores, teacher_scores]))
    negatives = pa.concat_tables([
        sft_rows([msgs("user", f"q {p}") for p in ids], [f"neg {learner} {p}" for p in ids], prompt_ids=ids,
                  agent=learner, source_agent=f"{learner}-neg", round_=0)
        for learner in ("student", "teacher-0", "teacher-1")])
    pairs = pairing.macpo_pairs(candidates, negatives, round_=1)
    student = {r["prompt_id"]: r for r in pairs["student"].to_pylist()}
    assert student["a"]["chosen"] == msgs("assistant", "label a") and student["a"]["chosen_agent"] == "teacher-0"
    assert student["a"]["chosen_ppl"] == 2.0
    assert student["b"]["chosen"] == msgs("assistant", "t1 b") and student["b"]["chosen_ppl"] == 3.0
    assert [r["chosen"] for r in pairs["teacher-0"].to_pylist()] == [msgs("assistant", "own a"), msgs("assistant", "own b")]


# ---- the CI run -------------------------------------------------------------------------------
def _sql(out, q):
    from macpo.sql import open_store, run_query

    return run_query(open_store(str(out / "store")), q)[-1][1]


def test_ci_run_samples_weak_labels_and_reuses_them_in_round_1(ci_run):
    from macpo.builder.generate import derive_seed

    out, _ = ci_run
    cfg = config_mod.load(out / "run.yaml")
    s = cfg.sampling
    assert cfg.weak_labels == "sampled" and s.temperature > 0
    labels = _sql(out, """SELECT subset, temperature, top_p, top_k, max_new_tokens, list_sort(list(DISTINCT seed)), count(*)
                          FROM sft WHERE version = 'round-0-labels' AND subset IN ('weak-labels', 'weak-negatives')
                          GROUP BY ALL ORDER BY 1""")
    # Each shard's seed is derived from (seed, round 0, agent, shard), so a rebuild draws the same labels.
    shards = range(-(-32 // cfg.shard_size))
    assert [tuple(r) for r in labels] == [
        (subset, s.temperature, s.top_p, s.top_k, s.max_new_tokens,
         sorted(derive_seed(s.seed, cfg.seed, 0, agent, k) for k in shards), 32)
        for subset, agent in (("weak-labels", "teacher-0"), ("weak-negatives", "teacher-0-neg"))]
    # Round 1: teacher-0's candidates are its weak labels, prompt by prompt, with their ids and seeds;
    # the student scored them for the familiarity filter like the other teacher's fresh samples.
    reused = _sql(out, """SELECT count(*), count(*) FILTER (WHERE c.response_text = s.completion_text AND c.seed = s.seed
                                                           AND c.candidate_id = 'r0-teacher-0-' || c.prompt_id || '-0'),
                                 count(*) FILTER (WHERE list_filter(c.familiarity, lambda f: f.scorer = 'student')[1].ppl > 0)
                          FROM candidates c JOIN sft s USING (prompt_id)
                          WHERE c.round = 1 AND c.agent = 'teacher-0' AND s.version = 'round-0-labels'
                            AND s.subset = 'weak-labels'""")
    assert reused == [(32, 32, 32)]
    fresh = _sql(out, "SELECT agent, count(*) FROM candidates WHERE round = 1 AND candidate_id LIKE 'r1-%' GROUP BY ALL ORDER BY 1")
    assert fresh == [("student", 32), ("teacher-1", 32)]


def test_greedy_weak_labels_on_the_ci_run(ci_run, tmp_path, monkeypatch):
    """`weak_labels: greedy` rebuilds the labels with argmax decoding (the run's own models, on a copy)."""
    from macpo.builder.rounds import RoundBuilder
    from macpo.run.config import resolve_config

    out = tmp_path / "copy"
    shutil.copytree(ci_run[0], out)
    cfg = resolve_config(config_mod.load(out / "run.yaml", {"out": str(out), "weak_labels": "greedy"}))

    def build_once():
        builder = RoundBuilder(cfg, progress=False)
        written = {}
        # Capture the version instead of committing it: the copy's store already holds the sampled one.
        monkeypatch.setattr(builder, "_write", lambda version, subsets, parent, models=None: written.update(subsets))
        try:
            builder.build_labels()
        finally:
            builder.close()
        return {k: written[k].table.to_pylist() for k in ("weak-labels", "weak-negatives")}

    first = build_once()
    for rows in first.values():
        assert len(rows) == 32 and {(r["temperature"], r["top_p"], r["top_k"]) for r in rows} == {(0.0, 1.0, 0)}
    shutil.rmtree(out / "store" / ".work", ignore_errors=True)  # no checkpoints: generate again
    assert build_once() == first
    # Greedy labels are not round-1 samples: they would not be reused as candidates.
    labels = pa.Table.from_pylist(first["weak-labels"])
    ids = [r["prompt_id"] for r in first["weak-labels"]]
    sampling = {"temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p, "top_k": cfg.sampling.top_k,
                "max_new_tokens": cfg.sampling.max_new_tokens}
    assert weak_labels_as_candidates(labels, ids, agent="teacher-0", round_=1, sampling=sampling) is None
