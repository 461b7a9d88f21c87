"""The weak-to-strong premise gates, checked at round 0 before any MACPO round.

A sandbox result says something about MACPO only if the world poses the paper's question
(a strong student with latent skill but no assistant behaviour, weaker aligned teachers, unseen
test prompts). Each gate is a pure function returning one row
``{"name", "value", "threshold", "pass", "detail"}``; :func:`compute` gathers their inputs from a
run's store and :func:`write` puts them in ``OUT/gates.json`` (``{"gates": [...]}``):

* ``pretrained-below-teachers``: the pretrained student's combined gold reward is below every
  weak teacher's after its SFT on D_w (value: student; threshold: the weakest teacher);
* ``ceiling-minus-naive``: the gold ceiling (student SFT'd on gold responses for Q, with the
  naive baseline's budget) minus naive weak-to-strong >= 0.10: there is a gap left to close;
* ``naive-minus-best-teacher``: naive weak-to-strong minus the best teacher >= 0.05: the student
  generalises beyond its weak labels;
* ``test-overlap``: test prompts (by text) and test items (operand pairs, sequences, verb-target
  requests) found in any training text of the store: the pretraining documents, D_w, Q and every
  pairs / sft / candidates table: must be 0 (one SQL query, :data:`OVERLAP_SQL`);
* ``filter-beats-random``: among Q prompts where at least one teacher candidate is gold-correct,
  how often the student's lowest-perplexity pick is gold-correct (value) against the expected
  rate of a uniformly random pick (threshold); passes when strictly higher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

CEILING_GAP = 0.10
NAIVE_GAP = 0.05

# Agents of the round-0 evaluation that exist for the gates (beside student and teachers).
PRETRAINED, CEILING = "student-pretrained", "student-ceiling"


def _gate(name: str, value, threshold, passed: bool, detail: str) -> dict:
    return {"name": name, "value": value, "threshold": threshold, "pass": bool(passed), "detail": detail}


def _na(name: str, threshold, why: str) -> dict:
    return {"name": name, "value": None, "threshold": threshold, "pass": False, "detail": f"not measured: {why}"}


def student_below_teachers(pretrained: float | None, teachers: Mapping[str, float]) -> dict:
    name = "pretrained-below-teachers"
    if pretrained is None or not teachers:
        return _na(name, None, "needs the pretrained student's and the teachers' round-0 scores")
    weakest = min(teachers.values())
    detail = f"pretrained student {pretrained:.3f}; teachers after SFT " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(teachers.items()))
    return _gate(name, pretrained, weakest, pretrained < weakest, detail)


def ceiling_minus_naive(ceiling: float | None, naive: float | None, threshold: float = CEILING_GAP) -> dict:
    name = "ceiling-minus-naive"
    if ceiling is None or naive is None:
        return _na(name, threshold, "needs the gold ceiling and the naive weak-to-strong student")
    gap = ceiling - naive
    return _gate(name, gap, threshold, gap >= threshold, f"gold ceiling {ceiling:.3f} - naive weak-to-strong {naive:.3f}")


def naive_minus_best_teacher(naive: float | None, teachers: Mapping[str, float], threshold: float = NAIVE_GAP) -> dict:
    name = "naive-minus-best-teacher"
    if naive is None or not teachers:
        return _na(name, threshold, "needs the naive weak-to-strong student and the teachers")
    best, score = max(teachers.items(), key=lambda kv: kv[1])
    gap = naive - score
    return _gate(name, gap, threshold, gap >= threshold, f"naive weak-to-strong {naive:.3f} - best teacher {best} {score:.3f}")


def no_overlap(prompt_hits: int | None, item_hits: int | None, n_test: int | None) -> dict:
    name = "test-overlap"
    if prompt_hits is None or item_hits is None:
        return _na(name, 0, "the store has no test prompts")
    total = int(prompt_hits) + int(item_hits)
    return _gate(name, total, 0, total == 0 and bool(n_test),
                 f"{n_test} test prompts: {prompt_hits} found as training text, {item_hits} share an item with training text")


def filter_rates(rows: Iterable[Mapping[str, Any]]) -> dict:
    """How often the perplexity filter and a random pick choose a gold-correct candidate.

    ``rows``: one per teacher candidate, ``{"prompt_id", "agent", "ppl", "gold"}`` (``ppl`` under
    the student, ``gold`` the candidate's gold reward). Only prompts with at least one candidate
    of gold 1 count. The filter picks the lowest perplexity (ties: the first agent by name, as
    a stable sort would); a random pick is right with probability (#correct / #candidates).
    """
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    picked, random_pick, n = 0.0, 0.0, 0
    for cands in by_prompt.values():
        correct = [c["gold"] >= 1.0 for c in cands]
        if not any(correct):
            continue
        n += 1
        best = min(sorted(cands, key=lambda c: c["agent"]), key=lambda c: c["ppl"])
        picked += best["gold"] >= 1.0
        random_pick += sum(correct) / len(cands)
    return {"filter": picked / n if n else None, "random": random_pick / n if n else None, "prompts": n,
            "all_prompts": len(by_prompt), "max_candidates": max(map(len, by_prompt.values()), default=0)}


def filter_beats_random(rates: Mapping[str, Any] | None) -> dict:
    name = "filter-beats-random"
    if not rates or rates.get("filter") is None:
        return _na(name, None, "no round-1 teacher candidates with a gold-correct response yet")
    if rates.get("max_candidates", 2) < 2:  # K=1: the pick is forced, filter and random agree by construction
        return _na(name, None, "one teacher candidate per prompt (K=1): the filter has nothing to choose between")
    return _gate(name, rates["filter"], rates["random"], rates["filter"] > rates["random"],
                 f"{rates['prompts']} of {rates['all_prompts']} Q prompts have a gold-correct teacher candidate; "
                 f"filter picks one {rates['filter']:.3f}, random pick {rates['random']:.3f}")


def all_gates(scores: Mapping[str, float], overlap: Mapping[str, int] | None, rates: Mapping[str, Any] | None,
              teachers: list[str]) -> list[dict]:
    """Every gate from round-0 combined scores per agent (``student``, ``teacher-k``,
    :data:`PRETRAINED`, :data:`CEILING`), the overlap counts and the filter rates."""
    t = {k: scores[k] for k in teachers if scores.get(k) is not None}
    overlap = overlap or {}
    return [
        student_below_teachers(scores.get(PRETRAINED), t),
        ceiling_minus_naive(scores.get(CEILING), scores.get("student")),
        naive_minus_best_teacher(scores.get("student"), t),
        no_overlap(overlap.get("prompt_hits"), overlap.get("item_hits"), overlap.get("n_test")),
        filter_beats_random(rates),
    ]


# ---- inputs from a run's store ----------------------------------------------------------------

# Test prompts of the data version {data}/{version} against every training text in the store.
# Training text: the pretraining documents and the D_w / Q prompts of the data version, and the
# prompts of every pairs, sft and candidates table of any dataset.
OVERLAP_SQL = """
WITH test AS (
    SELECT prompt[1].content AS text, json_extract_string(meta, '$.item') AS item
    FROM prompts WHERE dataset = {data} AND version = {version} AND split = 'test'
), train_prompts AS (
    SELECT prompt FROM prompts WHERE split IS NULL OR split NOT IN ('test', 'val')
    UNION ALL SELECT prompt FROM pairs
    UNION ALL SELECT prompt FROM sft
    UNION ALL SELECT prompt FROM candidates
), train_text AS (
    SELECT DISTINCT m.content AS text FROM (SELECT unnest(prompt) AS m FROM train_prompts)
), train_items AS (
    SELECT DISTINCT unnest(from_json(json_extract(meta, '$.items'), '["VARCHAR"]')) AS item
    FROM prompts WHERE split = 'pretrain' AND json_extract(meta, '$.items') IS NOT NULL
    UNION SELECT json_extract_string(meta, '$.item') FROM prompts
    WHERE split IS NOT NULL AND split NOT IN ('test', 'val', 'pretrain') AND json_extract_string(meta, '$.item') IS NOT NULL
)
SELECT (SELECT count(*) FROM test) AS n_test,
       (SELECT count(*) FROM test WHERE text IN (SELECT text FROM train_text)) AS prompt_hits,
       (SELECT count(*) FROM test WHERE item IN (SELECT item FROM train_items)) AS item_hits
"""


def overlap_counts(store, data: str, version: str) -> dict:
    """Run :data:`OVERLAP_SQL` through the store's read-only SQL layer (macpo sql)."""
    from macpo import sql

    con = sql.connect(sql.store_sources(store))
    query = OVERLAP_SQL.format(data=sql._q(data), version=sql._q(version))
    (cols, rows), = sql.run_query(con, query)
    return dict(zip(cols, rows[0]))


def round0_scores(store, layout, split: str) -> dict[str, dict]:
    """Gold aggregates of every agent evaluated at round 0 (on the run's eval split)."""
    from macpo.eval.sandbox.reward import aggregate

    data, version = store.resolve(layout.data_dataset)
    test = store.read(data, version, split)
    metas = dict(zip(test.column("prompt_id").to_pylist(), test.column("meta").to_pylist()))
    if not store.has(layout.evals_dataset, "round-0"):
        return {}
    by_agent: dict[str, list[dict]] = {}
    for r in store.read(layout.evals_dataset, "round-0", "default").to_pylist():
        by_agent.setdefault(r["agent"], []).append(r)
    return {a: aggregate([metas[r["prompt_id"]] for r in rows], [r["response"][0]["content"] for r in rows])
            for a, rows in by_agent.items()}


def candidate_rows(store, layout, teachers: list[str]) -> list[dict]:
    """Round-1 teacher candidates (written by the round-0 models) with the student's perplexity
    and their gold reward on Q."""
    from macpo.eval.sandbox.reward import gold_reward

    if not store.has(layout.rounds_dataset, "round-1"):
        return []
    data, version = store.resolve(layout.data_dataset)
    q = store.read(data, version, "q")
    metas = dict(zip(q.column("prompt_id").to_pylist(), q.column("meta").to_pylist()))
    out = []
    for c in store.read(layout.rounds_dataset, "round-1", "candidates").to_pylist():
        if c["agent"] not in teachers or c["prompt_id"] not in metas:
            continue
        ppl = next((s["ppl"] for s in c.get("familiarity") or [] if s["scorer"] == "student"), None)
        if ppl is None:
            continue
        out.append({"prompt_id": c["prompt_id"], "agent": c["agent"], "ppl": ppl,
                    "gold": gold_reward(metas[c["prompt_id"]], c["response"][0]["content"])["reward"]})
    return out


def compute(cfg) -> dict:
    """The gates of a sandbox run from its store (round-0 evals, round-1 candidates, SQL)."""
    from macpo.layout import RunLayout
    from macpo.store import Store

    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    teachers = cfg.teacher_names()
    aggs = round0_scores(store, layout, cfg.eval.split)
    scores = {a: agg["combined"] for a, agg in aggs.items()}
    data, version = store.resolve(layout.data_dataset)
    overlap = overlap_counts(store, data, version)
    rates = filter_rates(candidate_rows(store, layout, teachers))
    return {"gates": all_gates(scores, overlap, rates, teachers), "scores": aggs, "filter": rates, "overlap": overlap,
            "split": cfg.eval.split}


def write(result: Mapping[str, Any], out: Path) -> Path:
    path = Path(out) / "gates.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def render(gates: list[Mapping[str, Any]]) -> str:
    """Plain-text lines, failing gates first-class: one line per gate."""
    failed = [g["name"] for g in gates if not g["pass"]]
    head = "premise gates: all pass" if not failed else f"premise gates: {len(failed)} FAILED ({', '.join(failed)})"
    lines = [head]
    for g in gates:
        mark = "pass" if g["pass"] else "FAIL"
        lines.append(f"  [{mark}] {g['name']}: {_num(g['value'])} (threshold {_num(g['threshold'])}) - {g['detail']}")
    return "\n".join(lines)
