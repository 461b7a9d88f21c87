"""``macpo eval``: the eval stage.

- ``--prepare``: make the run's data (``<name>-data``: ``dw`` pairs, ``q`` and ``test`` prompts)
  and, for the built-in sandbox, pretrain (or load from cache) the agents' base models.
- ``--round N``: every agent's round-N model answers the held-out prompts (greedy unless ``eval.greedy: false``); each
  answer is scored per axis — the gold reward in the sandbox, and any sequence-classification
  reward models named in ``eval.reward_models`` — and written as ``<name>-evals/round-N``.
- ``--gates`` (sandbox weak-to-strong runs): the premise gates at round 0 (pretrained student below
  every teacher, gold ceiling and naive gaps, zero test overlap by SQL, filter vs random pick) in
  ``OUT/gates.json`` (:mod:`macpo.eval.sandbox.gates`).
- ``--judge``: the run's LLM judge (``eval.judge``, :mod:`macpo.eval.judge_llm`) compares the student with
  the round-0 student and each teacher, pairwise in both orders; ``--report`` shows the result.
- ``--report``: the round x agent table, ``metrics.csv``, win rates against the round-0
  student, PNG plots and ``report.md`` in the run's output folder.

The command (its options, loading and resolving the run config) is the run layer's
(:mod:`macpo.run.stages`); this module gets the resolved config as an argument.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pyarrow as pa

from macpo.builder.generate import backend_record, generator_for
from macpo.errors import UserError
from macpo.eval import sandbox
from macpo.eval.judges import reward_model_scores
from macpo.eval.sandbox.gates import CEILING, DPO_SANITY_AGENT, PRETRAINED
from macpo.layout import RunLayout, apply_threads
from macpo.methods import SELF_PLAY, WEAK_TO_STRONG
from macpo.store import Store, Subset

if TYPE_CHECKING:  # the run layer's type: a stage is handed a resolved config, never loads one
    from macpo.config import RunConfig


def is_sandbox(cfg: RunConfig) -> bool:
    return bool(cfg.world) or any(str(a.model).startswith("sandbox:") for a in [cfg.student, *cfg.teachers])


# ---- prepare ---------------------------------------------------------------------------------
def prepare(cfg: RunConfig) -> None:
    layout = RunLayout(cfg)
    store = Store(layout.store_dir, create=True)
    if is_sandbox(cfg):
        names = [f"teacher-{k}" for k in range(cfg.K)] + ["student"]
        sandbox.prepare_models(cfg.world, names=names)
        sandbox.write_world(store, layout.data_dataset, cfg.world)
        return
    split_offline_data(cfg, store, layout.data_dataset)


def split_offline_data(cfg: RunConfig, store, name: str) -> None:
    """Real preference data: a deterministic split of one stored pairs subset into dw / q / test.

    ``data: {store, dataset, version, subset, test_fraction, q_fraction, max_rows}``. The split
    hashes the prompt id, so it does not depend on row order; ``max_rows: {dw: N, q: N, test: N}``
    keeps the N rows (q, test: distinct prompts) of each split with the lowest hash.
    """
    d = cfg.data
    if not d.get("store"):
        raise UserError("config data.store is required when the run does not use the sandbox")
    src = Store(d["store"])
    ds, version = src.resolve(d.get("dataset"), d.get("version"))
    pairs = src.read(ds, version, d.get("subset", "default"))
    test_frac, q_frac = float(d.get("test_fraction", 0.1)), float(d.get("q_fraction", 0.45))
    buckets = [int(hashlib.sha256(f"{cfg.seed}/{pid}".encode()).hexdigest()[:8], 16) / 2**32 for pid in pairs.column("prompt_id").to_pylist()]
    test_idx = [i for i, b in enumerate(buckets) if b < test_frac]
    q_idx = [i for i, b in enumerate(buckets) if test_frac <= b < test_frac + q_frac]
    dw_idx = [i for i, b in enumerate(buckets) if b >= test_frac + q_frac]
    caps = d.get("max_rows") or {}
    if not isinstance(caps, dict) or set(caps) - {"dw", "q", "test"} or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in caps.values()):
        raise UserError(f"config data.max_rows: expected {{dw|q|test: positive integer}}, got {caps!r}")

    def cap(idx, split):
        if split not in caps:
            return idx
        return sorted(sorted(idx, key=lambda i: (buckets[i], i))[: caps[split]])

    dw_idx = cap(dw_idx, "dw")

    def prompts(idx, split):
        ids = pairs.column("prompt_id").to_pylist()
        idx = sorted({ids[i]: i for i in reversed(idx)}.values())  # one row per distinct prompt
        t = pairs.take(cap(idx, "q" if split == "train" else split))
        return pa.table({"prompt_id": t.column("prompt_id"), "prompt": t.column("prompt"), "split": [split] * t.num_rows})

    store.write(name, "v1", {"dw": Subset("pairs", pairs.take(dw_idx)), "q": Subset("prompts", prompts(q_idx, "train")),
                             "test": Subset("prompts", prompts(test_idx, "test"))},
                extra={"source": {"store": str(d["store"]), "dataset": ds, "version": version}})


# ---- one round -------------------------------------------------------------------------------
def eval_agents(cfg: RunConfig, round_: int | None = None) -> list[str]:
    if cfg.method in SELF_PLAY:
        return ["student"]
    if round_ == 0 and has_premise_gates(cfg):
        return [*cfg.agent_names(), PRETRAINED, CEILING, DPO_SANITY_AGENT]
    return cfg.agent_names()


def has_premise_gates(cfg: RunConfig) -> bool:
    """Sandbox weak-to-strong runs measure the premise gates (pretrained student and gold ceiling
    evaluated at round 0)."""
    return is_sandbox(cfg) and cfg.method in WEAK_TO_STRONG


def _agent_model(layout: RunLayout, agent: str, round_: int):
    return layout.base_model("student") if agent == PRETRAINED else layout.require_model(agent, round_)


def evaluate_round(cfg: RunConfig, round_: int, progress: bool = True):
    apply_threads(cfg)
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    data_name, data_version = store.resolve(layout.data_dataset)
    test = store.read(data_name, data_version, cfg.eval.split)
    prompts = test.column("prompt").to_pylist()
    metas = test.column("meta").to_pylist()
    s = cfg.sampling
    params = s.for_call(cfg.seed, n=1, greedy=cfg.eval.greedy)
    rows = []
    agents = eval_agents(cfg, round_)
    for agent in agents:
        model = _agent_model(layout, agent, round_)
        gen = generator_for(cfg.generation, layout.model_source(agent, model), batch_size=cfg.eval.batch_size,
                            progress=progress, seed=cfg.seed)
        texts = [s[0] for s in gen.generate(prompts, params)]
        scores = score_responses(cfg, metas, prompts, texts)
        for pid, prompt, text, sc in zip(test.column("prompt_id").to_pylist(), prompts, texts, scores):
            rows.append({"round": round_, "agent": agent, "method": cfg.method, "prompt_id": pid, "prompt": prompt,
                         "response": [{"role": "assistant", "content": text}], "scores": sc})
    table = pa.Table.from_pylist(rows)
    return store.write(layout.evals_dataset, f"round-{round_}", {"default": Subset("evals", table)},
                       config=cfg.to_dict(), models={a: str(_agent_model(layout, a, round_)) for a in agents},
                       extra={"generation": backend_record(cfg.generation)})


def score_responses(cfg: RunConfig, metas, prompts, texts) -> list[list[dict]]:
    out = [[] for _ in texts]
    if is_sandbox(cfg):
        for i, (meta, text) in enumerate(zip(metas, texts)):
            for axis, value in sandbox.gold_reward(meta, text).items():
                if value is not None:
                    out[i].append({"axis": axis, "scorer": "gold", "value": float(value)})
    for axis, checkpoints in (cfg.eval.reward_models or {}).items():
        for ckpt in [checkpoints] if isinstance(checkpoints, str) else checkpoints:
            for i, v in enumerate(reward_model_scores(ckpt, prompts, texts, batch_size=cfg.eval.batch_size)):
                out[i].append({"axis": axis, "scorer": ckpt, "value": float(v)})
    return out
