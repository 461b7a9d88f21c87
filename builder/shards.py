"""One shard of a build: load a model, generate or score one shard of prompts, key its checkpoint.

Module-level functions, so a Ray worker runs exactly what the build process runs
(:mod:`macpo.builder.executor` ships them by reference).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from macpo.builder.generate import generator_for
from macpo.builder.models import load_model
from macpo.builder.score import score
from macpo.hashing import json_hash
from macpo.schema import conform


def load_generator(generation, source, batch_size: int, seed: int, progress: bool = True):
    """The run's generation backend loaded with one model (revision and GGUF file honoured)."""
    return generator_for(generation, source, batch_size=batch_size, progress=progress, seed=seed)


def load_scorer(source, progress: bool = True):
    return load_model(source.path, revision=source.revision, gguf_file=source.gguf_file)


def generate_shard(generator, item, progress: bool = True):
    """A ``candidates`` table: ``params.n`` samples of each prompt of one shard."""
    where, round_, agent, prompt_ids, prompts, params = item
    outputs = generator.generate(prompts, params)
    rows = {k: [] for k in ("candidate_id", "prompt_id", "sample_index", "prompt", "response")}
    for pid, prompt, samples in zip(prompt_ids, prompts, outputs):
        for k, text in enumerate(samples):
            rows["candidate_id"].append(f"r{round_}-{agent}-{pid}-{k}")
            rows["prompt_id"].append(pid)
            rows["sample_index"].append(k)
            rows["prompt"].append(prompt)
            rows["response"].append([{"role": "assistant", "content": text}])
    m = len(rows["candidate_id"])
    table = pa.table(
        {
            **rows,
            "round": pa.array([round_] * m, pa.int32()),
            "agent": [agent] * m,
            "sample_index": pa.array(rows["sample_index"], pa.int32()),
            **{k: [v] * m for k, v in params.columns().items()},
        }
    )
    return conform(table, "candidates", where)


def score_shard(model_and_tokenizer, item, progress: bool = True):
    """``candidate_id, scorer, ppl`` of one shard of candidates under the scorer's model."""
    scorer, candidate_ids, prompts, responses = item
    model, tokenizer = model_and_tokenizer
    s = score(model, tokenizer, prompts, responses, progress=progress, desc=f"score under {scorer}")
    return pa.table({"candidate_id": pa.array(candidate_ids, pa.string()), "scorer": [scorer] * len(candidate_ids),
                     "ppl": pa.array(s.ppl, pa.float64())})


def fingerprint(*parts) -> str:
    """Key of a shard checkpoint: its inputs and the model folder's files (names, sizes, mtimes),
    so a checkpoint left by a different prompt set or a retrained model is never reused."""
    model = Path(parts[1])
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model.iterdir() if f.is_file()) if model.is_dir() else str(model)
    return json_hash([parts[0], str(model), files, *parts[2:]])[7:23]
