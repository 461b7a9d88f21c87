"""The store's table schemas, defined once.

Every table the store holds has a *kind*; each kind is one Arrow schema. Conversational
columns hold TRL's message form, a list of ``{"role", "content"}`` structs, so a ``pairs``
table goes into ``DPOTrainer`` untouched and an ``sft`` table into ``SFTTrainer``
(prompt-completion form).

Optional values are nullable columns, never missing columns: one schema per kind keeps
SQL views, hashing and Parquet files uniform across rounds.
"""

from __future__ import annotations

import pyarrow as pa

from macpo.errors import UserError

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# Sampling provenance shared by every generated row; null for human-written data.
_SAMPLING = [
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("top_k", pa.int32()),
    pa.field("max_new_tokens", pa.int32()),
    pa.field("seed", pa.int64()),
]

PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        # The learner this pair trains: "student", "teacher-0", ... or "default" for imports.
        pa.field("agent", pa.string(), nullable=False),
        # e.g. "human", "mutual-positive", "self-positive", "spac".
        pa.field("pair_type", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        # Which agent generated each side ("human" for labelled data, "<agent>-neg" for
        # a negative model).
        pa.field("chosen_agent", pa.string()),
        pa.field("rejected_agent", pa.string()),
        *_SAMPLING,
        # Perplexity of the chosen response under the learner (the familiarity filter).
        pa.field("chosen_ppl", pa.float64()),
        # y' for SPIN/SPAC: the current policy's own sample for this prompt.
        pa.field("self_response", MESSAGES),
        pa.field("self_agent", pa.string()),
        # Summed response log-probs under the learner's reference model; TRL's
        # DataCollatorForPreference consumes the first two directly.
        pa.field("ref_chosen_logps", pa.float64()),
        pa.field("ref_rejected_logps", pa.float64()),
        pa.field("ref_self_logps", pa.float64()),
    ]
)

SFT = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        # The agent this example is for ("teacher-0", "student-neg", ...) or "all".
        pa.field("agent", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("completion", MESSAGES, nullable=False),
        # Who wrote the completion: "human", "teacher-0", "teacher-0-neg", ...
        pa.field("source_agent", pa.string()),
        *_SAMPLING,
    ]
)

SCORE = pa.struct([("scorer", pa.string()), ("ppl", pa.float64())])

CANDIDATES = pa.schema(
    [
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        # The agent whose model generated the response ("teacher-1", "student-neg", ...).
        pa.field("agent", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("response", MESSAGES, nullable=False),
        *_SAMPLING,
        # Perplexity of the response under each scorer agent's model.
        pa.field("familiarity", pa.list_(SCORE)),
    ]
)

PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        # "train", "test", ...; free-form.
        pa.field("split", pa.string()),
        # JSON text with whatever a gold reward or judge needs (task, answer, ...).
        pa.field("meta", pa.string()),
    ]
)

EVAL_SCORE = pa.struct([("axis", pa.string()), ("scorer", pa.string()), ("value", pa.float64())])

EVALS = pa.schema(
    [
        pa.field("round", pa.int32(), nullable=False),
        pa.field("agent", pa.string(), nullable=False),
        # What produced the model being evaluated: "macpo", "naive-w2s", "ceiling", ...
        pa.field("method", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("response", MESSAGES, nullable=False),
        pa.field("scores", pa.list_(EVAL_SCORE)),
    ]
)

KINDS: dict[str, pa.Schema] = {
    "pairs": PAIRS,
    "sft": SFT,
    "candidates": CANDIDATES,
    "prompts": PROMPTS,
    "evals": EVALS,
}


def schema_for(kind: str) -> pa.Schema:
    try:
        return KINDS[kind]
    except KeyError:
        raise UserError(f"unknown table kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}") from None


def conform(table: pa.Table, kind: str, where: str) -> pa.Table:
    """Return ``table`` in the exact column order and types of ``kind``.

    Missing nullable columns are added as nulls; extra columns, missing required columns,
    type mismatches and nulls in required columns raise a UserError naming the column and
    ``where`` (the dataset/version/subset being written or read).
    """
    schema = schema_for(kind)
    extra = [name for name in table.column_names if schema.get_field_index(name) < 0]
    if extra:
        raise UserError(f"{where}: unexpected column(s) {', '.join(extra)} for a {kind} table")
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            if not field.nullable:
                raise UserError(f"{where}: missing required column {field.name!r} ({kind} table)")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserError(
                    f"{where}: column {field.name!r} has type {column.type}, expected {field.type}"
                ) from exc
        if not field.nullable and column.null_count:
            raise UserError(f"{where}: column {field.name!r} has {column.null_count} null value(s)")
        columns.append(column)
    out = pa.Table.from_arrays(columns, schema=schema)
    _check_messages(out, schema, where)
    return out


def _check_messages(table: pa.Table, schema: pa.Schema, where: str) -> None:
    """Conversational columns must hold non-null role/content strings."""
    import pyarrow.compute as pc

    for field in schema:
        if field.type != MESSAGES:
            continue
        flat = pc.list_flatten(table.column(field.name))
        if len(flat) == 0:
            continue
        for part in ("role", "content"):
            nulls = pc.struct_field(flat, part).null_count
            if nulls:
                raise UserError(f"{where}: column {field.name!r} has {nulls} message(s) with a null {part}")
