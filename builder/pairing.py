"""Pairing rules: pure functions from candidate tables to TRL-native ``pairs`` tables.

No model runs here. Inputs are store tables (``macpo.schema``):

- ``candidates``: one row per (prompt_id, generating agent, sample_index), with
  ``familiarity`` = the response's perplexity under each scorer agent's model;
- ``hard_negatives``: an ``sft`` table, one row per (learner, prompt): ``agent`` = the
  learner, ``completion`` = its fixed hard negative, ``source_agent`` = ``"<learner>-neg"``;
- ``preferences``: a ``pairs`` table (x, y+, y-) for SPAC/SPIN.

MACPO (docs/algorithms.md; one pair per prompt per learner):

- student: chosen = the teacher candidate (``sample_index`` 0) with the lowest perplexity
  under the student (familiarity scorer ``"student"``), ties to the lowest teacher index;
  ``chosen_ppl`` is that minimum. pair_type ``"mutual-positive"``.
- teacher k: chosen = the student's candidate, ``chosen_ppl`` its perplexity under
  ``teacher-k`` when scored (else null). pair_type ``"mutual-positive"``.
- rejected = the learner's own hard negative (``rejected_agent`` = ``"<learner>-neg"``).
- ``mutual_positive=False`` (-MP): the student's chosen is its own sample-0 candidate
  (pair_type ``"self-positive"``); teachers are unchanged.
- ``chosen_rule`` replaces the familiarity filter to bound what it adds: ``"oracle"`` picks the
  teacher candidate with the highest gold reward (sandbox only), ``"random"`` a seeded random
  teacher per prompt (:func:`pick_teacher`).
- ``negative="self"``: rejected = the learner's own *plain* candidate with ``sample_index`` 1
  (generate n >= 2 per agent), ``rejected_agent`` = the learner. A SPIN-like contrast against
  the agent's own samples; not the paper's -HN.
- ``negative="none"`` (the paper's -HN): no rejected side. The pairs still carry the
  positives (``rejected`` = chosen as a placeholder, never trained on); :func:`positives_sft`
  turns them into the ``sft`` table each learner trains on with NLL.

Missing inputs: a prompt lacking any required row (a sample-0 candidate of any agent, a hard
negative, or a sample-1 candidate under ``negative="self"``) is incomplete. With ``strict=True`` (default)
that raises a PairingError naming the count and a few prompt ids; with ``strict=False`` such
prompts are dropped from *every* subset (so learners stay aligned on the same prompts) and
listed in ``Pairing.dropped``. A candidate the rule must rank but that carries no
familiarity score from ``"student"`` is a builder bug and always raises. Every such error is a
:class:`PairingError` (a ``ValueError``), never a ``UserError``: it shows its traceback.

Rows come out sorted by prompt_id; ``pair_id`` hashes (round, learner, prompt_id) for
MACPO and (round, learner, source pair_id) for SPAC/SPIN.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from macpo.methods import CHOSEN_RULES, SELF_PLAY
from macpo.schema import REF_LOGPS, SCORE, conform

SAMPLING_COLUMNS = ("temperature", "top_p", "top_k", "max_new_tokens", "seed")
STUDENT = "student"


class PairingError(ValueError):
    """Inputs that break a pairing invariant. The builder produces these tables, so this is a bug
    (in the builder or in a caller's hand-made tables), reported with its traceback."""


class Pairing(dict):
    """``{learner: pairs table}`` (``"student"``, ``"teacher-0"``, ...) plus ``dropped``: the
    prompt ids left out for missing inputs (only ever non-empty with ``strict=False``)."""

    def __init__(self, subsets: dict[str, pa.Table], dropped: Sequence[str] = ()):
        super().__init__(subsets)
        self.dropped = list(dropped)


def pair_ids(round_: int, learner: str, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Deterministic pair ids: sha256 of (round, learner, key), 24 hex characters."""
    prefix = f"{round_}\x1f{learner}\x1f"
    return pa.array([hashlib.sha256((prefix + k).encode()).hexdigest()[:24] for k in keys.to_pylist()], pa.string())


def teacher_order(candidates: pa.Table, student: str = STUDENT) -> list[str]:
    """Teacher agents in natural order (teacher-2 before teacher-10): the tie-break order."""
    names = set(pc.unique(candidates.column("agent")).to_pylist()) - {student}
    key = lambda s: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]  # noqa: E731
    return sorted((a for a in names if not a.endswith("-neg")), key=key)


def familiarity_entries(candidates: pa.Table) -> pa.Table:
    """The ``familiarity`` lists flattened: one ``(row, scorer, ppl)`` row per score."""
    if "familiarity" not in candidates.column_names:
        return pa.table({"row": pa.array([], pa.int64()), "scorer": pa.array([], pa.string()),
                         "ppl": pa.array([], pa.float64())})
    fam = candidates.column("familiarity").combine_chunks()
    flat = pc.list_flatten(fam)
    return pa.table(
        {
            "row": pc.list_parent_indices(fam).cast(pa.int64()),
            "scorer": pc.struct_field(flat, "scorer"),
            "ppl": pc.struct_field(flat, "ppl"),
        }
    )


def ppl_under(candidates: pa.Table, scorer: str) -> pa.Array:
    """Each candidate's perplexity under ``scorer`` (null where it was not scored)."""
    entries = familiarity_entries(candidates)
    entries = entries.filter(pc.fill_null(pc.equal(entries.column("scorer"), scorer), False))
    if pc.count_distinct(entries.column("row")).as_py() != entries.num_rows:
        raise PairingError(f"candidates: some familiarity lists score {scorer!r} twice")
    where = pc.index_in(pa.array(np.arange(candidates.num_rows)), value_set=entries.column("row"))
    return pc.take(entries.column("ppl"), where).combine_chunks()


def attach_familiarity(candidates: pa.Table, scores: pa.Table) -> pa.Table:
    """Candidates with ``scores`` (``candidate_id, scorer, ppl`` rows) added to ``familiarity``.

    Entries already in ``familiarity`` are kept (the column is appended if missing); each list
    ends up sorted by scorer. A score for an unknown candidate, or two scores of one candidate
    by the same scorer, is an error.
    """
    ids = candidates.column("candidate_id").combine_chunks()
    if pc.count_distinct(ids).as_py() != len(ids):
        raise PairingError("candidates: candidate_id values are not unique")
    rows = pc.index_in(scores.column("candidate_id"), value_set=ids)
    if rows.null_count:
        raise PairingError(f"familiarity scores name {rows.null_count} unknown candidate id(s)")
    new = pa.table({"row": rows.cast(pa.int64()), "scorer": scores.column("scorer").cast(pa.string()),
                    "ppl": scores.column("ppl").cast(pa.float64())})
    entries = pa.concat_tables([familiarity_entries(candidates), new]).combine_chunks()
    keys = pc.binary_join_element_wise(entries.column("row").cast(pa.string()), entries.column("scorer"), "\x1f")
    if pc.count_distinct(keys).as_py() != entries.num_rows:
        raise PairingError("familiarity: a candidate has two scores from the same scorer")
    entries = entries.sort_by([("row", "ascending"), ("scorer", "ascending")])
    counts = np.bincount(entries.column("row").to_numpy(), minlength=candidates.num_rows)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())
    values = pa.StructArray.from_arrays(
        [entries.column("scorer").combine_chunks(), entries.column("ppl").combine_chunks()], fields=list(SCORE)
    )
    column = pa.ListArray.from_arrays(offsets, values, type=pa.list_(SCORE))
    if "familiarity" not in candidates.column_names:
        return candidates.append_column("familiarity", column)
    return candidates.set_column(candidates.schema.get_field_index("familiarity"), "familiarity", column)


def _single_round(table: pa.Table, what: str, expected: int | None) -> int:
    rounds = pc.unique(table.column("round")).to_pylist()
    if len(rounds) != 1 or (expected is not None and rounds[0] != expected):
        wanted = "one round" if expected is None else f"round {expected}"
        raise PairingError(f"{what}: expected rows of {wanted}, found rounds {sorted(rounds)}")
    return int(rounds[0])


def _rows(table: pa.Table, mask: pa.Array, what: str) -> pa.Table:
    """(prompt_id, row) for the rows of ``table`` selected by ``mask``: at most one per prompt."""
    keyed = pa.table({"prompt_id": table.column("prompt_id"), "row": pa.array(np.arange(table.num_rows))})
    keyed = keyed.filter(mask)
    if keyed.num_rows != pc.count_distinct(keyed.column("prompt_id")).as_py():
        raise PairingError(f"{what}: more than one row for the same prompt")
    return keyed


def _first_per_prompt(table: pa.Table) -> pa.Table:
    """First row of each prompt_id in a table already sorted by prompt_id."""
    ids = table.column("prompt_id").combine_chunks()
    if len(ids) == 0:
        return table
    starts = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    return table.filter(pa.concat_arrays([pa.array([True]), starts]))


def _align(prompts: pa.Array, keyed: pa.Table) -> pa.Array:
    """Row numbers of ``keyed`` matched to each prompt id in ``prompts`` (null if absent)."""
    return pc.take(keyed.column("row"), pc.index_in(prompts, value_set=keyed.column("prompt_id")))


def _check_complete(prompts: pa.Array, parts: dict[str, pa.Array], strict: bool) -> tuple[pa.Array, list[str]]:
    """Prompts having every part; raise (strict) or return the missing prompt ids."""
    ok = np.ones(len(prompts), bool)
    reasons = []
    for name, rows in parts.items():
        present = rows.is_valid().to_numpy(zero_copy_only=False)
        if not present.all():
            reasons.append(f"{(~present).sum()} without {name}")
        ok &= present
    missing = pc.filter(prompts, pa.array(~ok)).to_pylist()
    if missing and strict:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise PairingError(
            f"{len(missing)} prompt(s) lack inputs for pairing ({'; '.join(reasons)}): {shown} "
            "(pass strict=False to drop them)"
        )
    return pa.array(ok), missing


def macpo_pairs(
    candidates: pa.Table,
    hard_negatives: pa.Table | None,
    *,
    round_: int | None = None,
    student: str = STUDENT,
    teachers: Sequence[str] | None = None,
    mutual_positive: bool = True,
    negative: str = "hard",
    strict: bool = True,
    chosen_rule: str = "familiarity",
    gold: pa.Table | None = None,
    rule_seed: int = 0,
) -> Pairing:
    """MACPO pairs for the student and every teacher from one round's candidates (see module doc).

    ``round_`` (optional) asserts the candidates' round; ``teachers`` sets the tie-break order
    (default: every non-student, non-``-neg`` agent in natural order). ``chosen_rule`` picks the
    student's chosen teacher candidate (see :func:`pick_teacher`); ``gold`` (``candidate_id, gold``)
    is needed by ``"oracle"``, ``rule_seed`` seeds ``"random"``.
    """
    if chosen_rule not in CHOSEN_RULES:
        raise PairingError(f"chosen_rule must be one of {', '.join(CHOSEN_RULES)}, got {chosen_rule!r}")
    round_ = _single_round(candidates, "candidates", round_)
    teachers = list(teachers) if teachers is not None else teacher_order(candidates, student)
    if not teachers:
        raise PairingError("candidates: no teacher candidates found")
    learners = [student, *teachers]
    agent, index = candidates.column("agent"), candidates.column("sample_index")
    sample = lambda a, i: pc.and_(pc.equal(agent, a), pc.equal(index, i))  # noqa: E731
    primary = {a: _rows(candidates, sample(a, 0), f"candidates of {a}") for a in learners}
    if negative not in ("hard", "self", "none"):
        raise ValueError(f"negative must be 'hard', 'self' or 'none', got {negative!r}")
    hard_negative = negative == "hard"
    if hard_negative:
        if hard_negatives is None:
            raise PairingError("negative='hard' needs a hard_negatives table")
        negatives = {
            a: _rows(hard_negatives, pc.equal(hard_negatives.column("agent"), a), f"hard negatives of {a}")
            for a in learners
        }
    elif negative == "self":
        negatives = {a: _rows(candidates, sample(a, 1), f"sample-1 candidates of {a}") for a in learners}
    else:
        negatives = {}

    prompt_sources = [candidates.column("prompt_id")]
    if hard_negative:
        prompt_sources.append(hard_negatives.column("prompt_id"))
    prompts = pc.unique(pa.chunked_array([c for s in prompt_sources for c in s.chunks], pa.string())).sort()
    parts = {f"a sample-0 candidate of {a}": _align(prompts, primary[a]) for a in learners}
    what = "a hard negative" if hard_negative else "a sample-1 candidate"
    parts.update({f"{what} of {a}": _align(prompts, negatives[a]) for a in negatives})
    keep, dropped = _check_complete(prompts, parts, strict)
    prompts = prompts.filter(keep)

    subsets = {}
    for learner in learners:
        if learner == student and mutual_positive:
            chosen, chosen_ppl = pick_teacher(candidates, prompts, teachers, primary, student, rule=chosen_rule,
                                              gold=gold, seed=rule_seed, round_=round_)
            pair_type = "mutual-positive"
        else:  # teachers learn the student's sample; under -MP the student does too
            chosen = _align(prompts, primary[student])
            chosen_ppl = pc.take(ppl_under(candidates, learner), chosen)
            pair_type = "self-positive" if learner == student else "mutual-positive"
        # negative="none": the chosen row stands in for the rejected side; positives_sft drops it.
        rejected = _align(prompts, negatives[learner]) if negatives else chosen
        subsets[learner] = _assemble(
            candidates, chosen, chosen_ppl, hard_negatives if hard_negative else candidates, rejected,
            learner=learner, round_=round_, pair_type=pair_type, hard_negative=hard_negative,
        )
    return Pairing(subsets=subsets, dropped=dropped)


def pick_teacher(candidates, prompts, teachers, primary, student, *, rule: str = "familiarity",
                 gold: pa.Table | None = None, seed: int = 0, round_: int = 0) -> tuple[pa.Array, pa.Array]:
    """Per prompt, the teacher candidate row the student learns from, and its student perplexity.

    - ``familiarity`` (the paper): lowest perplexity under the student; ties to the teacher order.
    - ``oracle``: highest gold reward (``gold``: ``candidate_id, gold``); ties by familiarity, then
      teacher order. An upper bound on what any filter over these candidates can pick.
    - ``random``: teacher ``sha256(seed, round, prompt_id) mod K``, the same whatever the
      candidates say: what the filter adds over picking blindly.
    """
    if rule == "familiarity":
        return _least_perplexing(candidates, prompts, teachers, primary, student)
    pool = _teacher_pool(candidates, prompts, teachers, primary, student)
    if rule == "oracle":
        if gold is None:
            raise PairingError("chosen_rule='oracle' needs a gold table (candidate_id, gold)")
        ids = pc.take(candidates.column("candidate_id"), pool.column("row"))
        where = pc.index_in(ids, value_set=gold.column("candidate_id"))
        values = pc.take(gold.column("gold"), where)
        if values.null_count:
            raise PairingError(f"chosen_rule='oracle': {values.null_count} teacher candidate(s) have no gold score")
        pool = pool.append_column("gold", values.cast(pa.float64()))
        pool = pool.sort_by([("prompt_id", "ascending"), ("gold", "descending"), ("ppl", "ascending"), ("rank", "ascending")])
    elif rule == "random":
        picks = [int(hashlib.sha256(f"{seed}\x1f{round_}\x1f{p}".encode()).hexdigest()[:8], 16) % len(teachers)
                 for p in pool.column("prompt_id").to_pylist()]
        pool = pool.filter(pc.equal(pool.column("rank"), pa.array(picks, pa.int32())))
        pool = pool.sort_by([("prompt_id", "ascending")])
    else:
        raise PairingError(f"unknown chosen_rule {rule!r}")
    best = _first_per_prompt(pool)
    return best.column("row").combine_chunks(), best.column("ppl").combine_chunks()


def _teacher_pool(candidates, prompts, teachers, primary, student) -> pa.Table:
    """(prompt_id, rank, row, ppl): every teacher's sample-0 candidate per prompt, with its student perplexity."""
    ppl = ppl_under(candidates, student)
    pools = []
    for k, teacher in enumerate(teachers):
        rows = _align(prompts, primary[teacher])
        pools.append(pa.table({"prompt_id": prompts, "rank": pa.array([k] * len(prompts), pa.int32()),
                               "row": rows, "ppl": pc.take(ppl, rows)}))
    pool = pa.concat_tables(pools)
    unscored = pool.filter(pc.is_null(pool.column("ppl")))
    if unscored.num_rows:
        raise PairingError(
            f"{unscored.num_rows} teacher candidate(s) have no familiarity score from {student!r}, "
            f"e.g. prompt {unscored.column('prompt_id')[0].as_py()!r}; score them before pairing"
        )
    return pool


def _least_perplexing(candidates, prompts, teachers, primary, student) -> tuple[pa.Array, pa.Array]:
    """Per prompt, the teacher candidate row with the lowest student perplexity (ties: teacher order)."""
    pool = _teacher_pool(candidates, prompts, teachers, primary, student)
    pool = pool.sort_by([("prompt_id", "ascending"), ("ppl", "ascending"), ("rank", "ascending")])
    best = _first_per_prompt(pool)
    return best.column("row").combine_chunks(), best.column("ppl").combine_chunks()


def _assemble(candidates, chosen, chosen_ppl, rejected_source, rejected, *, learner, round_, pair_type, hard_negative):
    """A conformed ``pairs`` table from chosen candidate rows and rejected rows."""
    ch = candidates.take(chosen)
    rej = rejected_source.take(rejected)
    n = ch.num_rows
    if hard_negative:
        rejected_text = rej.column("completion")
        rejected_agent = pc.fill_null(rej.column("source_agent"), f"{learner}-neg")
    else:
        rejected_text = rej.column("response")
        rejected_agent = rej.column("agent")
    table = pa.table(
        {
            "pair_id": pair_ids(round_, learner, ch.column("prompt_id")),
            "prompt_id": ch.column("prompt_id"),
            "round": pa.array([round_] * n, pa.int32()),
            "agent": pa.array([learner] * n, pa.string()),
            "pair_type": pa.array([pair_type] * n, pa.string()),
            "prompt": ch.column("prompt"),
            "chosen": ch.column("response"),
            "rejected": rejected_text,
            "chosen_agent": ch.column("agent"),
            "rejected_agent": rejected_agent,
            **{c: ch.column(c) for c in SAMPLING_COLUMNS},
            "chosen_ppl": chosen_ppl,
        }
    )
    return conform(table, "pairs", f"round {round_} pairs for {learner}")


def positives_sft(pairs: pa.Table) -> pa.Table:
    """A learner's positives as an ``sft`` table (the paper's -HN trains NLL on them alone)."""
    table = pa.table(
        {
            "example_id": pairs.column("pair_id"),
            "prompt_id": pairs.column("prompt_id"),
            "round": pairs.column("round"),
            "agent": pairs.column("agent"),
            "prompt": pairs.column("prompt"),
            "completion": pairs.column("chosen"),
            "source_agent": pairs.column("chosen_agent"),
            **{c: pairs.column(c) for c in SAMPLING_COLUMNS},
        }
    )
    return conform(table, "sft", "positives")


def self_play_pairs(
    preferences: pa.Table,
    candidates: pa.Table,
    *,
    agent: str,
    pair_type: str = "spac",
    round_: int | None = None,
    strict: bool = True,
) -> Pairing:
    """SPAC/SPIN rows ``{agent: table}``: each preference (x, y+, y-) plus the policy's sample y'.

    ``candidates`` are the current policy's samples; the row of ``agent`` with sample_index 0
    is y' (``self_response``, ``self_agent``), and its sampling parameters and seed fill the
    sampling columns. ``pair_type="spac"`` (or ``"dpo"``, iterated DPO = SPAC with alpha 0)
    keeps rejected = y-. ``"spin"`` sets rejected = y' as well, so the table is SPIN as plain
    DPO (y+ over y') even for a trainer that ignores ``self_response``. Reference log-probs
    are left out (the new reference is the current policy); other columns are kept. Output
    round = the candidates' round; missing candidates as in :func:`macpo_pairs`.
    """
    if pair_type not in SELF_PLAY:  # a self-play method's pairs, named after it
        raise PairingError(f"self-play pair_type must be 'spac', 'spin' or 'dpo', got {pair_type!r}")
    round_ = _single_round(candidates, "candidates", round_)
    mask = pc.and_(pc.equal(candidates.column("agent"), agent), pc.equal(candidates.column("sample_index"), 0))
    own = _rows(candidates, mask, f"candidates of {agent}")
    prefs = preferences.sort_by([("prompt_id", "ascending"), ("pair_id", "ascending")])
    self_rows = _align(prefs.column("prompt_id").combine_chunks(), own)
    need = {f"a sample-0 candidate of {agent}": self_rows}
    keep, dropped = _check_complete(prefs.column("prompt_id").combine_chunks(), need, strict)
    prefs, self_rows = prefs.filter(keep), self_rows.filter(keep)
    y = candidates.take(self_rows)
    n = prefs.num_rows
    # The preferences' own reference log-probs (if any) were under another reference: left out,
    # not nulled, since an all-null ref column breaks TRL's collator (macpo/schema.py, SPARSE).
    columns = {name: prefs.column(name) for name in prefs.column_names if name not in REF_LOGPS}
    columns.update(
        pair_id=pair_ids(round_, agent, prefs.column("pair_id")),
        round=pa.array([round_] * n, pa.int32()),
        agent=pa.array([agent] * n, pa.string()),
        pair_type=pa.array([pair_type] * n, pa.string()),
        self_response=y.column("response"),
        self_agent=y.column("agent"),
        **{c: y.column(c) for c in SAMPLING_COLUMNS},
    )
    if pair_type == "spin":
        columns.update(rejected=y.column("response"), rejected_agent=y.column("agent"))
    table = conform(pa.table(columns), "pairs", f"round {round_} {pair_type} pairs for {agent}")
    return Pairing(subsets={agent: table}, dropped=sorted(set(dropped)))
