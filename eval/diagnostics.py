"""Pair diagnostics for one MACPO round: pure functions over the round's Arrow tables.

Inputs are store tables (``macpo.schema``) with a gold score attached by :func:`attach_gold`
(the report does that with the sandbox's gold reward; real data has no gold and skips these):

- ``pairs`` (one learner's subset) + ``chosen_gold`` / ``rejected_gold``;
- ``candidates`` + ``gold``.

They answer: are chosen responses better than rejected ones by the gold reward, which teacher
does the student's familiarity (perplexity) filter pick, does it pick better than chance and
how far from an oracle, and does low perplexity go with high gold at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from macpo.builder.pairing import ppl_under


def response_text(messages: list[dict] | None) -> str:
    """The text of a stored response (a message list; the last message is the answer)."""
    return messages[-1]["content"] if messages else ""


def attach_gold(table: pa.Table, column: str, metas: Mapping[str, Any], gold: Callable[[Any, str], float],
                name: str) -> pa.Table:
    """``table`` plus a float column ``name`` = ``gold(meta of the row's prompt, text of column)``.

    A row whose prompt has no meta gets null (a table from another data version, say).
    """
    ids = table.column("prompt_id").to_pylist()
    texts = table.column(column).to_pylist()
    values = [None if pid not in metas else float(gold(metas[pid], response_text(t))) for pid, t in zip(ids, texts)]
    return table.append_column(name, pa.array(values, pa.float64()))


def as_pairs(table: pa.Table) -> pa.Table:
    """A learner's round subset as chosen(/rejected) columns: ``pairs`` as they are; an ``sft`` subset
    (positives only, ``negative: none``) with completion -> chosen and source_agent -> chosen_agent."""
    if "chosen" in table.column_names or "completion" not in table.column_names:
        return table
    return pa.table({"prompt_id": table.column("prompt_id"), "chosen": table.column("completion"),
                     "chosen_agent": table.column("source_agent")})


def pair_gold(pairs: pa.Table) -> dict:
    """Gold of chosen vs rejected: means, % pairs with chosen strictly better, % identical texts.
    Without a ``rejected_gold`` column (positives only) just the chosen side."""
    n = pairs.num_rows
    if n == 0:
        return {"n": 0, "chosen_gold": None, "rejected_gold": None, "chosen_better": None, "identical": None}
    ch = np.asarray(pairs.column("chosen_gold").to_numpy(zero_copy_only=False), dtype=float)
    if "rejected_gold" not in pairs.column_names:  # positives only (negative: none)
        return {"n": n, "chosen_gold": float(np.nanmean(ch)) if (~np.isnan(ch)).any() else None,
                "rejected_gold": None, "chosen_better": None, "identical": None}
    rej = np.asarray(pairs.column("rejected_gold").to_numpy(zero_copy_only=False), dtype=float)
    same = [response_text(a) == response_text(b) for a, b in zip(pairs.column("chosen").to_pylist(), pairs.column("rejected").to_pylist())]
    ok = ~(np.isnan(ch) | np.isnan(rej))
    return {
        "n": n,
        "chosen_gold": float(np.nanmean(ch)) if ok.any() else None,
        "rejected_gold": float(np.nanmean(rej)) if ok.any() else None,
        "chosen_better": float(np.mean(ch[ok] > rej[ok])) if ok.any() else None,
        "identical": float(np.mean(same)),
    }


def filter_picks(pairs: pa.Table) -> dict[str, int]:
    """How often each agent's candidate is the chosen response (the student's subset: which teacher)."""
    counts = pc.value_counts(pairs.column("chosen_agent")).to_pylist()
    return {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: str(c["values"]))}


def _pool(candidates: pa.Table, student: str) -> pa.Table:
    """The teacher candidates the filter chooses among: sample 0 of every non-student, non-negative agent."""
    agent = candidates.column("agent")
    mask = pc.and_(pc.and_(pc.not_equal(agent, student), pc.invert(pc.ends_with(agent, "-neg"))),
                   pc.equal(candidates.column("sample_index"), 0))
    return candidates.filter(mask)


def filter_accuracy(candidates: pa.Table, student_pairs: pa.Table, *, student: str = "student",
                    correct: float = 1.0) -> dict:
    """The familiarity filter's pick against a uniformly random pick and an oracle pick.

    Per prompt, the pool is the teacher candidates (``gold`` column attached). ``*_correct`` is
    the rate of picking a gold-correct candidate (gold >= ``correct``) over the prompts where the
    pool has one; the random pick's rate is its exact expectation (share of correct candidates
    in the pool), and the oracle's is 1 by construction. ``*_gold`` are mean gold scores of the
    pick over every prompt with a pick.
    """
    pool = _pool(candidates, student)
    picks = {(p, a) for p, a in zip(student_pairs.column("prompt_id").to_pylist(), student_pairs.column("chosen_agent").to_pylist())}
    by_prompt: dict[str, list[tuple[str, float]]] = {}
    for pid, agent, g in zip(pool.column("prompt_id").to_pylist(), pool.column("agent").to_pylist(), pool.column("gold").to_pylist()):
        if g is not None:
            by_prompt.setdefault(pid, []).append((agent, g))
    chosen_gold, random_gold, oracle_gold = [], [], []
    f_ok, r_ok = [], []
    for pid, items in sorted(by_prompt.items()):
        mine = [g for a, g in items if (pid, a) in picks]
        if not mine:
            continue  # the prompt was not paired (dropped) or the pick is not a teacher candidate
        golds = np.array([g for _, g in items])
        chosen_gold.append(mine[0])
        random_gold.append(golds.mean())
        oracle_gold.append(golds.max())
        good = golds >= correct
        if good.any():
            f_ok.append(mine[0] >= correct)
            r_ok.append(good.mean())
    mean = lambda xs: float(np.mean(xs)) if xs else None  # noqa: E731
    return {
        "prompts": len(chosen_gold),
        "prompts_with_correct": len(f_ok),
        "filter_correct": mean(f_ok),
        "random_correct": mean(r_ok),
        "oracle_correct": 1.0 if f_ok else None,
        "filter_gold": mean(chosen_gold),
        "random_gold": mean(random_gold),
        "oracle_gold": mean(oracle_gold),
    }


def spearman(x, y) -> float | None:
    """Spearman rank correlation with average ranks for ties (no scipy in the dependencies).

    None for fewer than 3 complete pairs or a constant side (the correlation is undefined).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return None

    def ranks(v):
        arr = pa.array(v)
        return (pc.rank(arr, tiebreaker="min").to_numpy().astype(float) + pc.rank(arr, tiebreaker="max").to_numpy()) / 2

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def ppl_gold_spearman(candidates: pa.Table, scorer: str = "student") -> dict:
    """Spearman(perplexity under ``scorer``, gold) over the candidates that ``scorer`` scored.

    A working familiarity filter needs this negative: lower perplexity, higher gold.
    """
    ppl = ppl_under(candidates, scorer).to_numpy(zero_copy_only=False)
    gold = candidates.column("gold").to_numpy(zero_copy_only=False)
    ppl = np.asarray([np.nan if v is None else v for v in ppl], dtype=float)
    gold = np.asarray([np.nan if v is None else v for v in gold], dtype=float)
    n = int((~(np.isnan(ppl) | np.isnan(gold))).sum())
    return {"n": n, "spearman": spearman(ppl, gold)}


def dpo_rewards(metrics: Mapping[str, Any] | None) -> dict:
    """DPO reward accuracy and margin from a trainer ``metrics.json``: mean over steps and last step.

    TRL logs ``rewards/accuracies`` and ``rewards/margins`` per logging step; the trainer keeps
    them in ``reward_history`` (and the last step in ``final_step``). SFT runs have none.
    """
    out = {"accuracy_mean": None, "accuracy_last": None, "margin_mean": None, "margin_last": None, "steps": 0}
    if not metrics:
        return out
    hist = [h for h in metrics.get("reward_history") or [] if isinstance(h, Mapping)]
    acc = [h["rewards/accuracies"] for h in hist if isinstance(h.get("rewards/accuracies"), (int, float))]
    mar = [h["rewards/margins"] for h in hist if isinstance(h.get("rewards/margins"), (int, float))]
    last = metrics.get("final_step") or {}
    out.update(
        accuracy_mean=float(np.mean(acc)) if acc else None,
        margin_mean=float(np.mean(mar)) if mar else None,
        accuracy_last=acc[-1] if acc else last.get("rewards/accuracies"),
        margin_last=mar[-1] if mar else last.get("rewards/margins"),
        steps=len(acc),
    )
    return out
