"""Synthetic pairs tables for the data-plumbing benchmarks (hashing, Store.write, audits).

Random-word text from a fixed vocabulary (about 200 characters per message, as in
docs/runtime-notes.md), drawn from a pool of sentences with ``pc.take`` so that a
million rows build in a few seconds instead of a minute of Python string work.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from macpo.schema import MESSAGE, MESSAGES, PAIRS

_WORDS = None


def _words(rng: np.random.Generator) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(k))) for k in rng.integers(2, 10, size=2000)]


def sentence_pool(size: int, seed: int = 0, mean_chars: int = 199) -> pa.StringArray:
    rng = np.random.default_rng(seed)
    words = np.array(_words(rng))
    n_words = max(1, mean_chars // 6)
    out = []
    for _ in range(size):
        k = int(rng.integers(n_words // 2, n_words * 3 // 2 + 1))
        out.append(" ".join(words[rng.integers(0, len(words), size=k)]))
    return pa.array(out, pa.string())


def _messages(role: str, content: pa.Array) -> pa.ListArray:
    n = len(content)
    roles = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([role])).cast(pa.string())
    structs = pa.StructArray.from_arrays([roles, content], fields=list(MESSAGE))
    offsets = pa.array(np.arange(n + 1, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, structs, type=MESSAGES)


def pairs(n: int, seed: int = 0, pool: int = 100_000) -> pa.Table:
    """``n`` rows of the ``pairs`` schema with every column filled (nulls in a few)."""
    rng = np.random.default_rng(seed)
    sentences = sentence_pool(min(pool, max(n, 16)), seed)
    pick = lambda: pc.take(sentences, pa.array(rng.integers(0, len(sentences), size=n)))  # noqa: E731
    ids = pa.array(np.arange(n).astype(str)) if n < 2_000_000 else pc.cast(pa.array(np.arange(n)), pa.string())
    agents = np.array(["student", "teacher-0", "teacher-1", "teacher-2"])
    agent_idx = rng.integers(0, len(agents), size=n)
    ppl = rng.gamma(2.0, 5.0, size=n)
    ppl_mask = rng.random(n) < 0.1
    cols = {
        "pair_id": pc.binary_join_element_wise("pair-", ids, ""),
        "prompt_id": pc.binary_join_element_wise("p", pc.cast(pa.array(rng.integers(0, max(1, n // 4), size=n)), pa.string()), ""),
        "round": pa.array(rng.integers(0, 4, size=n).astype(np.int32)),
        "agent": pa.array(agents[agent_idx]),
        "pair_type": pa.array(np.where(agent_idx == 0, "mutual-positive", "self-positive")),
        "prompt": _messages("user", pick()),
        "chosen": _messages("assistant", pick()),
        "rejected": _messages("assistant", pick()),
        "chosen_agent": pa.array(agents[(agent_idx + 1) % len(agents)]),
        "rejected_agent": pa.array(np.char.add(agents[agent_idx], "-neg")),
        "temperature": pa.array(np.full(n, 0.7)),
        "top_p": pa.array(np.full(n, 0.95)),
        "top_k": pa.array(np.zeros(n, np.int32)),
        "max_new_tokens": pa.array(np.full(n, 64, np.int32)),
        "seed": pa.array(rng.integers(0, 2**31, size=n)),
        "chosen_ppl": pa.array(ppl, mask=ppl_mask),
        "ref_chosen_logps": pa.array(-ppl * 10),
        "ref_rejected_logps": pa.array(-ppl * 12),
    }
    table = pa.table(cols)
    # Columns left out are nullable and become all-null columns under conform().
    return table


def pairs_schema_table(n: int, seed: int = 0) -> pa.Table:
    from macpo.schema import conform

    return conform(pairs(n, seed), "pairs", "synthetic")



