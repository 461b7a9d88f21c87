"""Small table pieces of a round: SFT rows, weak labels reused as candidates, column helpers."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from macpo.errors import UserError
from macpo.schema import conform


def sft_rows(prompts, completions, *, prompt_ids, agent, source_agent, round_, sampling: dict | None = None):
    n = len(prompts)
    cols = {
        "example_id": [f"r{round_}-{agent}-{pid}" for pid in prompt_ids],
        "prompt_id": list(prompt_ids),
        "round": pa.array([round_] * n, pa.int32()),
        "agent": [agent] * n,
        "prompt": list(prompts),
        "completion": [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions],
        "source_agent": [source_agent] * n,
    }
    for key, value in (sampling or {}).items():
        cols[key] = [value] * n
    return pa.table(cols)


def concat(tables):
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def weak_labels_as_candidates(labels, prompt_ids: list[str], *, agent: str, round_: int, sampling: dict):
    """The ``weak-labels`` rows as ``agent``'s round-``round_`` candidates, one per prompt in
    ``prompt_ids`` order, or None when they were not drawn with ``sampling``'s settings (its seed
    aside: each keeps the seed it was drawn with). ``candidate_id`` is the id the label's own
    generation gave it (``r0-<agent>-<prompt_id>-0``), so a reused candidate reads as one."""
    settings = ("temperature", "top_p", "top_k", "max_new_tokens")
    drawn = {k: set(labels.column(k).to_pylist()) for k in settings}
    if any(drawn[k] != {sampling[k]} for k in settings) or set(labels.column("source_agent").to_pylist()) != {agent}:
        return None
    rows = {r["prompt_id"]: r for r in labels.select(["prompt_id", "prompt", "completion", *settings, "seed"]).to_pylist()}
    if len(rows) != labels.num_rows or set(rows) != set(prompt_ids):
        raise UserError(f"round-0-labels/weak-labels holds {len(rows)} prompts, Q has {len(prompt_ids)} other ones; "
                        "rebuild round 0 for this data")
    picked = [rows[pid] for pid in prompt_ids]
    table = pa.table({
        "candidate_id": [f"r0-{agent}-{pid}-0" for pid in prompt_ids],
        "prompt_id": list(prompt_ids),
        "round": pa.array([round_] * len(picked), pa.int32()),
        "agent": [agent] * len(picked),
        "sample_index": pa.array([0] * len(picked), pa.int32()),
        "prompt": [r["prompt"] for r in picked],
        "response": [r["completion"] for r in picked],
        **{k: [r[k] for r in picked] for k in (*settings, "seed")},
    })
    return conform(table, "candidates", f"round {round_} candidates of {agent} (its weak labels)")


def rows_equal(column, value):
    return pc.equal(column, value)


def replace_column(table, name, values):
    idx = table.schema.get_field_index(name)
    return table.set_column(idx, name, values) if idx >= 0 else table.append_column(name, values)
