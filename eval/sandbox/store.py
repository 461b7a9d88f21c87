"""The sandbox world as store subsets: what a run's ``prepare`` step writes (see :func:`write_world`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import pyarrow as pa

from macpo.eval.sandbox import corpus as C
from macpo.eval.sandbox.world import Prompt, World, build, gold_response, resolve
from macpo.store import Subset


def prompt_id(text: str) -> str:
    """A stable id from the prompt text (prompts are unique across the world's splits)."""
    return "w-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _prompt_table(prompts: list[Prompt], split: str):
    return pa.Table.from_pylist(
        [{"prompt_id": prompt_id(p.text), "prompt": _user(p.text), "split": split, "meta": json.dumps(p.meta, sort_keys=True)}
         for p in prompts]
    )


def pretrain_table(cfg: Mapping[str, Any]):
    """Every pretraining document the sandbox models read, as a ``prompts`` table (split
    ``pretrain``; ``meta`` = ``{"kind", "items"}``), so SQL can check it against the test set."""
    docs = C.documents(cfg, int(cfg["pretrain"]["seed"]), C.docs_read(cfg))
    return pa.table({
        "prompt_id": [f"pt-{i:07d}" for i in range(len(docs))],
        "prompt": [C.messages(d) for d in docs],
        "split": ["pretrain"] * len(docs),
        "meta": [json.dumps({"kind": d["kind"], "items": d["items"]}) for d in docs],
    })


def tables(world: World) -> dict:
    """The world as store subsets (see :func:`write_world`)."""
    dw = pa.Table.from_pylist(
        [
            {
                "pair_id": "dw-" + prompt_id(pair.prompt.text)[2:],
                "prompt_id": prompt_id(pair.prompt.text),
                "round": 0,
                "agent": "default",
                "pair_type": "human",
                "prompt": _user(pair.prompt.text),
                "chosen": _assistant(pair.chosen),
                "rejected": _assistant(pair.rejected),
                "chosen_agent": "human",
                "rejected_agent": "human",
            }
            for pair in world.dw
        ]
    )
    q_gold = pa.Table.from_pylist(
        [
            {"example_id": "gold-" + prompt_id(p.text)[2:], "prompt_id": prompt_id(p.text), "round": 0,
             "agent": "student", "prompt": _user(p.text), "completion": _assistant(gold_response(p.meta)),
             "source_agent": "gold"}
            for p in world.q
        ]
    )
    return {
        "dw": Subset("pairs", dw),
        "dw_prompts": Subset("prompts", _prompt_table([pair.prompt for pair in world.dw], "dw")),
        "q": Subset("prompts", _prompt_table(world.q, "train")),
        "q_gold": Subset("sft", q_gold),
        "val": Subset("prompts", _prompt_table(world.val, "val")),
        "test": Subset("prompts", _prompt_table(world.test, "test")),
        "pretrain": Subset("prompts", pretrain_table(world.cfg)),
    }


def write_world(store, name: str, world_cfg: Mapping[str, Any] | None = None) -> dict:
    """Write the world's data as ONE version of dataset ``name`` in ``store``.

    The version is the next ``vN`` (``v1`` in a fresh store); writing an identical world again
    is a no-op that returns the existing version. Subsets:

    * ``dw``         (pairs)   human-labelled D_w: pair_type "human", chosen/rejected_agent
      "human", agent "default", round 0; label noise as configured.
    * ``dw_prompts`` (prompts) the D_w prompts with their ``meta`` (split "dw"), to score D_w.
    * ``q``          (prompts) unlabelled prompts Q (split "train"). ``meta`` is there for
      analysis (the gold quality of rounds); training must not read it.
    * ``q_gold``     (sft)     gold responses on Q: the gold-ceiling baseline's training data.
    * ``val``        (prompts) held-out validation prompts (split "val"): choose settings here.
    * ``test``       (prompts) held-out test prompts (split "test"); ``meta`` (JSON: task,
      harmful, answer, item, ...) is what :func:`macpo.eval.sandbox.gold_reward` scores.
    * ``pretrain``   (prompts) every pretraining document the sandbox models read (split
      "pretrain"; chat transcripts as user + assistant turns, other documents as one
      ``document`` message; ``meta`` lists the document's items).

    Returns ``{"name", "version", "content_hash", "created", "rows"}``.
    """
    world = build(resolve(world_cfg))
    subsets = tables(world)
    result = store.write_next(
        name,
        subsets,
        config={"world": world.cfg},
        extra={"sandbox": {"gold_reward": "macpo.eval.sandbox.gold_reward", "format": "macpo-world/2"}},
    )
    return {
        "name": result.name,
        "version": result.version,
        "content_hash": result.content_hash,
        "created": result.created,
        "rows": {k: s.table.num_rows for k, s in subsets.items()},
    }
