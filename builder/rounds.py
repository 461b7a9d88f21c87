"""``macpo build``: the builder stage. Models + prompts in, one immutable round version out.

Round 0 (bootstrap) comes in three parts, because training happens in between:

- ``teachers``: ``round-0-teachers`` = ``teacher-sft`` (D_w chosen) + ``teacher-neg-sft`` (D_w rejected).
- ``labels``: ``round-0-labels`` = ``weak-labels`` / ``weak-negatives`` written on Q by the weak-label
  teacher and its negative model: sampled with the run's ``sampling`` settings and seeds (the paper),
  or greedy (``weak_labels: greedy``).
- ``final``: ``round-0`` = all of the above + ``hard-negatives``: one response per (learner, prompt)
  from the learner's own negative model, generated once and reused by every later round.

Round N >= 1 (MACPO): every positive agent samples candidates on Q with its round N-1 model;
in round 1 the weak-label teacher's candidates are its sampled weak labels (the same round-0 model
drew them with the same settings; the release's files show this reuse), keeping their own
``seed`` and their round-0 ``candidate_id``;
the student scores the teachers' candidates (familiarity), each teacher scores the student's;
the pairing rules (:mod:`macpo.builder.pairing`) make one ``pairs`` subset per learner, written
with the ``candidates`` subset as ``round-N``.

SPAC / SPIN / DPO runs: ``round-0`` holds ``student-sft`` (the offline chosen responses);
round N pairs the offline (y+, y-) with the policy's own sample y' (``self_response``).

Generation and scoring are checkpointed per shard of prompts under the store's work folder,
so a killed build resumes without redoing finished shards; shard seeds depend only on
(seed, round, agent, shard), so a resumed build has the same content hash. The shards run in
this process or on Ray workers (``executor: local | ray``, :mod:`macpo.builder.executor`);
either way this process writes every checkpoint and commits the round, and the round's content
hash does not depend on where its shards ran.

The command (``macpo build``: its options, loading and resolving the run config) is the run
layer's (:mod:`macpo.run.stages`); this module gets the resolved config and, for
``chosen_rule: oracle``, the gold scoring function as arguments.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from macpo.builder import pairing
from macpo.builder.executor import Work, engine_key, make_executor
from macpo.builder.generate import backend_record, derive_seed
from macpo.builder.round_tables import concat, replace_column, rows_equal, sft_rows, weak_labels_as_candidates
from macpo.builder.score import score_pairs
from macpo.builder.shards import fingerprint, generate_shard, load_generator, load_scorer, score_shard
from macpo.errors import UserError
from macpo.layout import RunLayout, apply_threads
from macpo.methods import SELF_PLAY
from macpo.store import Store, Subset

if TYPE_CHECKING:  # the run layer's type: a stage is handed a resolved config, never loads one
    from macpo.config import RunConfig

# The sandbox's gold reward of responses: (store, data dataset, prompt metas, response texts) -> one
# float per response. The run layer passes it for chosen_rule: oracle, the only rule that reads gold.
Oracle = Callable[[Store, str, list, list], list]

BOOTSTRAP_PARTS = ("teachers", "labels", "final")


class RoundBuilder:
    def __init__(self, cfg: RunConfig, progress: bool = True, executor=None, oracle: Optional[Oracle] = None):
        """``executor``: one already running (its owner closes it); default: the config's, made on first use.
        ``oracle``: the gold scoring function ``chosen_rule: oracle`` picks by (see ``Oracle``)."""
        self.cfg = cfg
        self.oracle = oracle
        self.layout = RunLayout(cfg)
        self.store = Store(self.layout.store_dir, create=True)
        self.progress = progress
        self._executor = executor
        self._owns_executor = executor is None
        self.shard_counts: Counter[str] = Counter()  # shards run by the executor / read from checkpoints
        apply_threads(cfg)

    # ---- inputs ------------------------------------------------------------------------
    def data(self, subset: str):
        name, version = self.store.resolve(self.layout.data_dataset)
        return self.store.read(name, version, subset)

    def _require(self, version: str) -> None:
        if not self.store.has(self.layout.rounds_dataset, version):
            raise UserError(f"{self.layout.rounds_dataset}/{version} is missing; build it first")

    def _round(self, version: str, subset: str):
        self._require(version)
        return self.store.read(self.layout.rounds_dataset, version, subset)

    def _sampling(self, round_: int, agent: str, shard: int, greedy: bool = False):
        s = self.cfg.sampling
        seed = derive_seed(s.seed, self.cfg.seed, round_, agent, shard)
        # negative: self contrasts with the agent's second plain sample, so it needs two.
        n = max(s.n, 2) if self.cfg.negative == "self" and self.cfg.method == "macpo" else s.n
        if greedy:
            return s.for_call(seed, greedy=True)
        return s.for_call(seed, n=n)

    # ---- sharded, resumable generation ---------------------------------------------------
    def scorer(self, agent: str, model_path: Path):
        """``(model, tokenizer)`` of ``agent`` for perplexity scoring (revision and GGUF file honoured)."""
        return load_scorer(self.layout.model_source(agent, model_path))

    @property
    def executor(self):
        """Where shards run (``executor: local | ray``); made on first use, so a build whose shards are
        all checkpointed, or that has none, never starts Ray."""
        if self._executor is None:
            self._executor = make_executor(self.cfg, progress=self.progress)
        return self._executor

    def close(self) -> None:
        if self._executor is not None and self._owns_executor:
            self._executor.close()
            self._executor = None

    def _run_shards(self, jobs: list, desc: str) -> list[list]:
        """``jobs``: ``(work, [(checkpoint path, shard input), ...])`` per model. Each shard's table,
        in shard order per job: read from its checkpoint, or run by the executor (only the missing
        ones, all jobs in one pass) and checkpointed by this process as it comes back."""
        missing = [(j, k) for j, (_, shards) in enumerate(jobs) for k, (path, _) in enumerate(shards) if not path.is_file()]
        total = sum(len(shards) for _, shards in jobs)
        self.shard_counts["run"] += len(missing)
        self.shard_counts["checkpointed"] += total - len(missing)
        done = {}
        for t, table in self.executor.map([(jobs[j][0], jobs[j][1][k][1]) for j, k in missing], desc=desc):
            j, k = missing[t]
            _atomic_parquet(table, jobs[j][1][k][0])
            done[j, k] = table
        return [[done[j, k] if (j, k) in done else pq.read_table(path) for k, (path, _) in enumerate(shards)]
                for j, (_, shards) in enumerate(jobs)]

    def _generate_job(self, version: str, round_: int, agent: str, model_path: Path, prompts_table, greedy: bool):
        work_dir = self.store.work_dir(self.layout.rounds_dataset, version)
        n = prompts_table.num_rows
        shards = []
        for shard in range((n + self.cfg.shard_size - 1) // self.cfg.shard_size):
            part = prompts_table.slice(shard * self.cfg.shard_size, self.cfg.shard_size)
            params = self._sampling(round_, agent, shard, greedy)
            ids = part.column("prompt_id").to_pylist()
            key = fingerprint(ids, model_path, repr(params))
            item = (f"{version} candidates of {agent}", round_, agent, ids, part.column("prompt").to_pylist(), params)
            shards.append((work_dir / f"gen-{agent}-{shard:05d}-{key}.parquet", item))
        source = self.layout.model_source(agent, model_path)
        load = partial(load_generator, self.cfg.generation, source, self.cfg.sampling.batch_size, self.cfg.sampling.seed)
        work = Work(key=repr(("generator", source, self.cfg.generation, self.cfg.sampling.batch_size, self.cfg.sampling.seed)),
                    load=load, run=generate_shard, desc=f"generate {agent}", model=repr(source),
                    engine=engine_key(self.cfg.generation, source))
        return work, shards

    def generate_all(self, version: str, round_: int, agents: list[tuple[str, Path]], prompts_table, greedy=False):
        """Candidates of each ``(agent, model)`` on every prompt (one table per agent), one Parquet
        checkpoint per shard."""
        jobs = [self._generate_job(version, round_, agent, path, prompts_table, greedy) for agent, path in agents]
        return [concat(tables) for tables in self._run_shards(jobs, desc=f"{version} generation")]

    def generate(self, version: str, round_: int, agent: str, model_path: Path, prompts_table, greedy=False):
        """Candidates of ``agent`` on every prompt, one Parquet checkpoint per shard."""
        return self.generate_all(version, round_, [(agent, model_path)], prompts_table, greedy)[0]

    def score_all(self, version: str, jobs: list[tuple[str, Path, object]]):
        """Perplexity of each candidate under each ``(scorer, model, candidates)``; checkpointed per shard."""
        work_dir = self.store.work_dir(self.layout.rounds_dataset, version)
        step = self.cfg.shard_size * max(1, self.cfg.sampling.n)
        planned = []
        for scorer, model_path, candidates in jobs:
            shards = []
            for shard, start in enumerate(range(0, candidates.num_rows, step)):
                part = candidates.slice(start, step)
                ids, responses = part.column("candidate_id").to_pylist(), part.column("response").to_pylist()
                key = fingerprint(ids, model_path, responses)
                item = (scorer, ids, part.column("prompt").to_pylist(), responses)
                shards.append((work_dir / f"ppl-{scorer}-{shard:05d}-{key}.parquet", item))
            source = self.layout.model_source(scorer, model_path)
            planned.append((Work(key=repr(("scorer", source)), load=partial(load_scorer, source), run=score_shard,
                                 desc=f"score under {scorer}", model=repr(source)), shards))
        return [concat(tables) for tables in self._run_shards(planned, desc=f"{version} scoring")]

    def score(self, version: str, scorer: str, model_path: Path, candidates):
        """Perplexity of each candidate under ``scorer``'s model; checkpointed per shard."""
        return self.score_all(version, [(scorer, model_path, candidates)])[0]

    # ---- round 0 -------------------------------------------------------------------------
    def next_bootstrap_part(self) -> str:
        name = self.layout.rounds_dataset
        if not self.store.has(name, "round-0-teachers"):
            return "teachers"
        if not self.store.has(name, "round-0-labels"):
            return "labels"
        return "final"

    def build_teachers(self):
        dw = self.data("dw")
        prompts, ids = dw.column("prompt").to_pylist(), dw.column("prompt_id").to_pylist()
        chosen = dw.column("chosen").to_pylist()
        if self.cfg.method in SELF_PLAY:
            # pi_0 for self-play methods: the student SFT'd on the offline chosen responses.
            sft = sft_rows(prompts, chosen, prompt_ids=ids, agent="student", source_agent="human", round_=0)
            subsets = {"student-sft": Subset("sft", sft)}
        else:
            rejected = dw.column("rejected").to_pylist()
            subsets = {
                "teacher-sft": Subset("sft", sft_rows(prompts, chosen, prompt_ids=ids, agent="teachers", source_agent="human", round_=0)),
                "teacher-neg-sft": Subset("sft", sft_rows(prompts, rejected, prompt_ids=ids, agent="teachers-neg", source_agent="human", round_=0)),
            }
        return self._write("round-0-teachers", subsets, parent=None)

    def build_labels(self):
        w = f"teacher-{self.cfg.weak_label_teacher}"
        q = self.data("q")
        greedy = self.cfg.weak_labels == "greedy"
        out = {}
        for subset, agent in (("weak-labels", w), ("weak-negatives", f"{w}-neg")):
            if subset == "weak-negatives" and self.cfg.method == "naive-w2s":
                continue  # the naive baseline never trains a student negative
            cands = self.generate("round-0-labels", 0, agent, self.layout.require_model(agent, 0), q, greedy=greedy)
            cands = cands.filter(rows_equal(cands.column("sample_index"), 0))  # one label per prompt (negative: self draws 2)
            cols = {c: cands.column(c).to_pylist() for c in ("prompt", "response", "prompt_id")}
            sampling = {k: cands.column(k)[0].as_py() for k in ("temperature", "top_p", "top_k", "max_new_tokens")}
            table = sft_rows(cols["prompt"], cols["response"], prompt_ids=cols["prompt_id"], agent="student" if subset == "weak-labels" else "student-neg",
                              source_agent=agent, round_=0, sampling=sampling)
            table = table.append_column("seed", cands.column("seed"))
            out[subset] = Subset("sft", table)
        data_name, data_version = self.store.resolve(self.layout.data_dataset)
        if "q_gold" in self.store.subsets(data_name, data_version):
            # The gold ceiling's training data (the sandbox knows the right answers on Q).
            out["gold-labels"] = Subset("sft", self.data("q_gold"))
        return self._write("round-0-labels", out, parent=self._hash("round-0-teachers"))

    def build_round0_final(self):
        name = self.layout.rounds_dataset
        subsets = {}
        # spac / spin / dpo runs have no round-0-labels (no weak labels, no negative agents).
        for version in [v for v in ("round-0-teachers", "round-0-labels") if self.store.has(name, v)]:
            for s in self.store.subsets(name, version):
                subsets[s] = Subset("sft", self.store.read(name, version, s))
        if self.cfg.method == "macpo":
            q = self.data("q")
            negatives = []
            learners = self.cfg.agent_names()
            generated = self.generate_all("round-0", 0, [(f"{x}-neg", self.layout.require_model(f"{x}-neg", 0)) for x in learners], q)
            for learner, cands in zip(learners, generated):
                agent = f"{learner}-neg"
                first = cands.filter(rows_equal(cands.column("sample_index"), 0))
                table = sft_rows(first.column("prompt").to_pylist(), first.column("response").to_pylist(),
                                  prompt_ids=first.column("prompt_id").to_pylist(), agent=learner, source_agent=agent, round_=0,
                                  sampling={k: first.column(k)[0].as_py() for k in ("temperature", "top_p", "top_k", "max_new_tokens")})
                negatives.append(table.append_column("seed", first.column("seed")))
            subsets["hard-negatives"] = Subset("sft", concat(negatives))
        return self._write("round-0", subsets, parent=self._hash("round-0-labels") if self.store.has(name, "round-0-labels") else self._hash("round-0-teachers"))

    # ---- round N >= 1 --------------------------------------------------------------------
    def build_round(self, n: int):
        if self.cfg.method in SELF_PLAY:
            return self._build_self_play_round(n)
        if self.cfg.method != "macpo":
            raise UserError(f"method {self.cfg.method!r} has no rounds after bootstrap (set T: 0)")
        version = f"round-{n}"
        previous = "round-0" if n == 1 else f"round-{n - 1}"
        hard_negatives = self._round("round-0", "hard-negatives") if self.cfg.negative == "hard" else None
        self._require(previous)
        q = self.data("q")
        agents = self.cfg.agent_names()
        models = {a: self.layout.require_model(a, n - 1) for a in agents}
        reused = self._weak_label_candidates(n, q)
        fresh = [a for a in agents if a not in reused]
        drawn = {**dict(zip(fresh, self.generate_all(version, n, [(a, models[a]) for a in fresh], q))), **reused}
        candidates = concat([drawn[a] for a in agents])
        # Familiarity: the student scores teacher candidates; each teacher scores the student's.
        is_student = rows_equal(candidates.column("agent"), "student")
        scores = self.score_all(version, [("student", models["student"], candidates),
                                          *[(t, models[t], candidates.filter(is_student)) for t in self.cfg.teacher_names()]])
        candidates = pairing.attach_familiarity(candidates, concat(scores))
        pairs = pairing.macpo_pairs(
            candidates, hard_negatives if self.cfg.negative == "hard" else None, round_=n,
            mutual_positive=self.cfg.mutual_positive, negative=self.cfg.negative,
            chosen_rule=self.cfg.chosen_rule, rule_seed=self.cfg.seed,
            gold=self._gold(candidates, q) if self.cfg.chosen_rule == "oracle" else None,
        )
        subsets = {"candidates": Subset("candidates", candidates)}
        for learner, table in pairs.items():
            if self.cfg.negative == "none":  # the paper's -HN: SFT on the positives, no rejected side
                subsets[learner] = Subset("sft", pairing.positives_sft(table))
                continue
            if self.cfg.store_ref_logps:
                table = self._with_ref_logps(table, learner, n)
            subsets[learner] = Subset("pairs", table)
        return self._write(version, subsets, parent=self._hash(previous), models={a: str(p) for a, p in models.items()})

    def _weak_label_candidates(self, n: int, q) -> dict:
        """``{weak-label teacher: its candidates}`` when its round-``n`` candidates are its weak labels,
        else ``{}``. Only in round 1, where its model is the round-0 one that wrote them, and only when
        the labels were drawn as round 1 draws (same settings, one sample per prompt): then they are
        samples round 1 could have drawn, and reusing them is what the release did."""
        w = f"teacher-{self.cfg.weak_label_teacher}"
        if n != 1 or w not in self.cfg.teacher_names():
            return {}
        params = self._sampling(n, w, 0)
        if params.n != 1:
            return {}
        table = weak_labels_as_candidates(self._round("round-0-labels", "weak-labels"), q.column("prompt_id").to_pylist(),
                                          agent=w, round_=n, sampling=params.columns())
        return {w: table} if table is not None else {}

    def _build_self_play_round(self, n: int):
        version = f"round-{n}"
        previous = "round-0" if n == 1 else f"round-{n - 1}"
        self._require(previous)
        offline = self.data("dw")
        model = self.layout.require_model("student", n - 1)
        ids = offline.column("prompt_id").to_pylist()
        first = sorted({pid: i for i, pid in reversed(list(enumerate(ids)))}.values())  # one sample per distinct prompt
        prompts = offline.select(["prompt_id", "prompt"]).take(first)
        candidates = self.generate(version, n, "student", model, prompts)
        pairs = pairing.self_play_pairs(offline, candidates, round_=n, pair_type=self.cfg.method, agent="student")["student"]
        if self.cfg.store_ref_logps:
            pairs = self._with_ref_logps(pairs, "student", n)
        subsets = {"student": Subset("pairs", pairs), "candidates": Subset("candidates", candidates)}
        return self._write(version, subsets, parent=self._hash(previous), models={"student": str(model)})

    def _gold(self, candidates, q):
        """``candidate_id, gold``: the sandbox's gold reward of each candidate (for chosen_rule=oracle only;
        no other rule may read the gold answers in Q's meta)."""
        if self.oracle is None:
            raise UserError("chosen_rule: oracle needs the sandbox's gold reward, which `macpo build` and `macpo run` "
                            "pass to the builder")
        metas = dict(zip(q.column("prompt_id").to_pylist(), q.column("meta").to_pylist()))
        ids, responses = candidates.column("prompt_id").to_pylist(), candidates.column("response").to_pylist()
        texts = [r[-1]["content"] if r else "" for r in responses]  # a response is a message list; the last is the answer
        values = self.oracle(self.store, self.layout.data_dataset, [metas[pid] for pid in ids], texts)
        return pa.table({"candidate_id": candidates.column("candidate_id"), "gold": pa.array(values, pa.float64())})

    def _with_ref_logps(self, table, learner: str, n: int):
        """Reference log-probs under the learner's DPO reference, so training skips the ref model."""
        stage = self.cfg.train["dpo"]
        # The same reference the trainer would build: `previous` = the start-of-round policy,
        # `base` = the agent's pretrained base weights (with its revision and GGUF file).
        ref = self.layout.require_model(learner, n - 1) if stage.ref == "previous" else self.layout.base_model(learner)
        model, tokenizer = self.scorer(learner, ref)
        prompts = table.column("prompt").to_pylist()
        chosen, rejected = score_pairs(model, tokenizer, prompts, table.column("chosen").to_pylist(),
                                       table.column("rejected").to_pylist(), max_length=stage.max_length, progress=self.progress)
        table = replace_column(table, "ref_chosen_logps", pa.array(chosen.sum_logps, pa.float64()))
        table = replace_column(table, "ref_rejected_logps", pa.array(rejected.sum_logps, pa.float64()))
        if "self_response" in table.column_names and table.column("self_response").null_count == 0:
            _, own = score_pairs(model, tokenizer, prompts, table.column("chosen").to_pylist(),
                                 table.column("self_response").to_pylist(), max_length=stage.max_length, progress=self.progress)
            table = replace_column(table, "ref_self_logps", pa.array(own.sum_logps, pa.float64()))
        return table

    # ---- writing ---------------------------------------------------------------------------
    def _hash(self, version: str) -> str:
        return self.store.manifest(self.layout.rounds_dataset, version)["content_hash"]

    def _write(self, version, subsets, parent, models=None):
        data_name, data_version = self.store.resolve(self.layout.data_dataset)
        return self.store.write(
            self.layout.rounds_dataset, version, subsets, parent_hash=parent, config=self.cfg.to_dict(),
            models={**{a: self._model_record(a) for a in self.cfg.agent_names()}, **({"used": models} if models else {})},
            extra={"method": self.cfg.method, "generation": backend_record(self.cfg.generation),
                   "data": {"dataset": data_name, "version": data_version,
                                                      "content_hash": self.store.manifest(data_name, data_version)["content_hash"]}},
        )

    def _model_record(self, agent: str) -> dict:
        spec = self.layout.agent_spec(agent)
        return {"model": spec.model, "revision": spec.revision, "gguf_file": spec.gguf_file}


def _atomic_parquet(table, path: Path) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def build(cfg: RunConfig, round_: int, part: str | None = None, progress: bool = True, oracle: Optional[Oracle] = None):
    """Build round ``round_`` (for round 0: the next bootstrap part, or ``part``); ``oracle``: see ``Oracle``."""
    if round_ < 0 or round_ > cfg.T:
        raise UserError(f"round {round_} is outside 0..T={cfg.T}")
    if round_ == 0 and part is not None and part not in BOOTSTRAP_PARTS:
        raise UserError(f"unknown round-0 part {part!r} (parts: {', '.join(BOOTSTRAP_PARTS)})")
    b = RoundBuilder(cfg, progress=progress, oracle=oracle)
    try:
        if round_ > 0:
            result = b.build_round(round_)
        else:
            part = part or b.next_bootstrap_part()
            result = {"teachers": b.build_teachers, "labels": b.build_labels, "final": b.build_round0_final}[part]()
    finally:
        loads = b._executor.load_report() if b._executor is not None else []  # before close: it drops the executor
        b.close()
    if b.shard_counts:
        where = f"{cfg.ray.num_workers} Ray workers" if cfg.executor == "ray" else "this process"
        print(f"shards: {b.shard_counts['run']} run on {where}, {b.shard_counts['checkpointed']} read from checkpoints",
              flush=True)
        for line in loads:  # model loads and engine starts per worker (the schedule's cost)
            print(f"  {line}", flush=True)
    return result
