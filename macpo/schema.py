"""The store's table schemas, defined once.

Every table the store holds has a *kind*; each kind is one Arrow schema. Conversational
columns hold TRL's message form, a list of ``{"role", "content"}`` structs, so a ``pairs``
table goes into ``DPOTrainer`` untouched and an ``sft`` table into ``SFTTrainer``
(prompt-completion form).

Optional values are nullable columns, present in every table of a kind, except the *sparse*
columns (:data:`SPARSE`): those are stored only when at least one row holds a value. The
reference log-probs are sparse because TRL's preference collator uses ``ref_chosen_logps`` /
``ref_rejected_logps`` whenever the columns exist, and an all-null column crashes a stock
``DPOTrainer`` ("Could not infer dtype of NoneType"); ``axis`` is sparse so that data without
one (every round a run builds) keeps the columns and content hash it had before ``axis``
existed. Readers treat an absent sparse column as all-null (the SQL views show it as NULL).
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
        # Sparse (see SPARSE): summed response log-probs under the learner's reference model;
        # TRL's DataCollatorForPreference consumes the first two directly.
        pa.field("ref_chosen_logps", pa.float64()),
        pa.field("ref_rejected_logps", pa.float64()),
        pa.field("ref_self_logps", pa.float64()),
        # Sparse: the preference axis a human label was given on ("helpful", "harmless" for
        # HH-RLHF; "better", "safer" for PKU-SafeRLHF).
        pa.field("axis", pa.string()),
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


# Columns stored only when some row holds a value (module docstring).
SPARSE: dict[str, tuple[str, ...]] = {"pairs": ("ref_chosen_logps", "ref_rejected_logps", "ref_self_logps", "axis")}
REF_LOGPS = ("ref_chosen_logps", "ref_rejected_logps", "ref_self_logps")


def sparse_columns(kind: str) -> tuple[str, ...]:
    return SPARSE.get(kind, ())


def core_schema(kind: str) -> pa.Schema:
    """``kind``'s schema without its sparse columns: what a table with no sparse values holds."""
    schema = schema_for(kind)
    for name in sparse_columns(kind):
        schema = schema.remove(schema.get_field_index(name))
    return schema


def schema_for(kind: str) -> pa.Schema:
    try:
        return KINDS[kind]
    except KeyError:
        raise UserError(f"unknown table kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}") from None


def conform(table: pa.Table, kind: str, where: str, *, stored: bool = False) -> pa.Table:
    """Return ``table`` in the exact column order and types of ``kind``.

    Missing nullable columns are added as nulls, except sparse ones, which stay absent; a
    sparse column with no value is dropped, unless ``stored`` (a table read back from the
    store or the Hub: versions written before sparse columns existed carry all-null ones, and
    their content hash covers them). Extra columns, missing required columns, type mismatches
    and nulls in required columns raise a UserError naming the column and ``where`` (the
    dataset/version/subset being written or read).
    """
    schema = schema_for(kind)
    extra = [name for name in table.column_names if schema.get_field_index(name) < 0]
    if extra:
        raise UserError(f"{where}: unexpected column(s) {', '.join(extra)} for a {kind} table")
    sparse = sparse_columns(kind)
    columns, fields = [], []
    for field in schema:
        if field.name in sparse and (field.name not in table.column_names
                                     or (not stored and table.column(field.name).null_count == table.num_rows)):
            continue
        fields.append(field)
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
    schema = pa.schema(fields) if len(fields) != len(schema) else schema
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
