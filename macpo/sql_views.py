"""The store as DuckDB views: which versions a query sees, and the SQL of each view.

One view per table kind (``pairs``, ``sft``, ...) with flat ``*_text`` columns, a ``KIND_facts``
view beside each (stored facts joined row for row, or computed from the text), and the
``datasets``, ``subsets`` and ``rounds`` tables. Every data file is read by its exact path
(:func:`duck_path`). The connection, its sandbox and the queries are :mod:`macpo.sql`'s.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from macpo.errors import UserError
from macpo.facts import fact_expressions, fact_files, fact_select_list, scalar_columns
from macpo.manifest import size_problems, validate_manifest
from macpo.schema import KINDS, MESSAGES


@dataclass
class VersionSource:
    dataset: str
    version: str
    root: Path  # folder holding manifest.json
    manifest: dict
    # False when the stored facts failed verification and could not be rebuilt (an audit in a
    # read-only store): the *_facts views then compute them from the text.
    use_facts: bool = True


def store_sources(store, dataset: str | None = None, version: str | None = None) -> list[VersionSource]:
    """Every version to expose, each manifest validated and each file's size checked (cheap):
    a damaged version stops the query with one line naming it."""
    out = []
    for name in store.datasets():
        if dataset is not None and name != dataset:
            continue
        for v in store.versions(name):
            if version is not None and v != version:
                continue
            manifest = store.manifest(name, v)
            store.check_sizes(name, v, manifest)
            out.append(VersionSource(name, v, store.path(name, v), manifest))
    return out


def snapshot_sources(folder: Path, dataset: str) -> list[VersionSource]:
    """A published Hub snapshot: ``<version>/manifest.json`` + ``<version>/<subset>/*.parquet``,
    each manifest validated like a local one."""
    out = []
    for manifest_path in sorted(folder.glob("*/manifest.json")):
        where = f"{dataset}/{manifest_path.parent.name}"
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except (ValueError, RecursionError) as exc:
            raise UserError(f"{where}: corrupt manifest ({str(exc).splitlines()[0][:200]})") from None
        validate_manifest(manifest, manifest_path.parent, where)
        problems = size_problems(manifest_path.parent, manifest)
        if problems:
            raise UserError(f"{where} is damaged: {'; '.join(problems)}")
        out.append(VersionSource(dataset, manifest_path.parent.name, manifest_path.parent, manifest))
    return out


def quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


_GLOB_CHARS = "*?["


def duck_path(path: Path) -> tuple[str, str]:
    """``(file, pattern)`` of one file a view reads: its resolved path, and that path as a
    DuckDB glob matching exactly it. DuckDB globs every path it is given, so a folder named
    ``h?`` would also read ``hx``; each ``*``, ``?`` and ``[`` becomes a one-character class
    (``[?]``). The sandbox allows both strings: DuckDB checks the pattern, then each file it
    matched. DuckDB's glob takes a backslash for a separator, so a name holding both a
    backslash and a glob character cannot be escaped and is refused, as is a name that is not
    UTF-8 (surrogate escapes cannot reach DuckDB)."""
    real = str(path.resolve())
    try:
        real.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{os.fsencode(real)!r}: the path is not UTF-8; rename it") from None
    if not any(c in real for c in _GLOB_CHARS):
        return real, real
    if "\\" in real:
        raise UserError(f"{real!r}: a path with both a backslash and one of * ? [ cannot be read exactly; rename it")
    return real, "".join(f"[{c}]" if c in _GLOB_CHARS else c for c in real)


def duck_error(exc: BaseException, limit: int = 600) -> str:
    """DuckDB's error as one line: its whole first paragraph (``Binder Error: ... not found!``
    plus the ``Candidate bindings`` line), without the ``LINE 1:`` excerpt that follows the
    blank line; control characters from the data escaped."""
    text = str(exc).split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    text = escape_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# C0/C1 controls and DEL, plus the bidirectional overrides and isolates (they reorder what a
# terminal shows): escaped in terminal output, never interpreted.
_UNSAFE = {c for c in range(0x20)} | {0x7F} | set(range(0x80, 0xA0)) | set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))
_ESCAPES = {ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}
_TRANSLATE = {c: _ESCAPES.get(c, f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def escape_text(text: str) -> str:
    """``text`` safe to print on a terminal: ESC shows as ``\\x1b``, a newline as ``\\n``."""
    return text.translate(_TRANSLATE)


def _text_columns(kind: str) -> str:
    cols = []
    for field in KINDS[kind]:
        if field.type == MESSAGES:
            base = field.name.removesuffix("_response") if field.name == "self_response" else field.name
            # Role-prefixed for prompts (they can be multi-turn), bare content for responses.
            if field.name == "prompt":
                expr = "array_to_string(list_transform(prompt, lambda m: m.role || ': ' || m.content), '\n')"
            else:
                expr = f"array_to_string(list_transform({field.name}, lambda m: m.content), '\n')"
            cols.append(f"{expr} AS {base}_text")
    return (", " + ", ".join(cols)) if cols else ""


def _empty_table(con, kind: str) -> str:
    """An empty table of ``kind``'s schema, registered under a fixed name (re-registering
    replaces it); views over no data select from it."""
    name = f"_empty_{kind}"
    con.register(name, pa.Table.from_pylist([], schema=KINDS[kind]))
    return name


_EMPTY_LABEL = "NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS subset"


def _facts_select(kind: str, label: str, source: str) -> str:
    """``KIND_facts`` rows computed from the text of ``source``."""
    scalars = ", ".join(f'"{c}"' for c in scalar_columns(kind))
    return f"SELECT {label}, {scalars}, {fact_select_list(kind)} FROM {source}"


_DUCK_TYPES = {"double": "DOUBLE", "string": "VARCHAR"}  # the types sparse columns have


def _columns(kind: str, present: set[str], names: list[str] | None = None) -> str:
    """The SELECT list of ``kind``'s columns (or ``names``) over one subset's Parquet files: a
    sparse column the files do not hold (macpo/schema.py, SPARSE) reads as a typed NULL, so
    every subset of a kind has the same columns."""
    schema = KINDS[kind]
    out = []
    for name in names if names is not None else schema.names:
        if name in present:
            out.append(f'"{name}"')
        else:
            out.append(f'NULL::{_DUCK_TYPES[str(schema.field(name).type)]} AS "{name}"')
    return ", ".join(out)


def _present_columns(first_file: Path) -> set[str]:
    """The columns one subset's shards hold (every shard of a subset has the same ones)."""
    return set(pq.read_schema(first_file).names)


def _facts_source(kind: str, label: str, data_files: list[Path], stored: list[Path] | None, present: set[str]) -> str:
    """SELECT of one subset's ``KIND_facts`` rows: the stored facts shards side by side with the
    data shards' scalar columns when valid, else the same facts computed from the text."""
    if not stored:
        files = "read_parquet([" + ", ".join(quote(duck_path(d)[1]) for d in data_files) + "])"
        return _facts_select(kind, label, f"(SELECT {_columns(kind, present)} FROM {files})")
    scalars = ", ".join(f'"{c}"' for c in scalar_columns(kind))
    names = ", ".join(name for name, _ in fact_expressions(kind))
    inner = _columns(kind, present, scalar_columns(kind))
    # POSITIONAL JOIN pairs row i of a data shard with row i of its facts shard; DuckDB still
    # reads only the columns a query uses from either side.
    return " UNION ALL ".join(
        f"SELECT {label}, {scalars}, {names} FROM (SELECT {inner} FROM read_parquet({quote(duck_path(d)[1])})) "
        f"POSITIONAL JOIN read_parquet({quote(duck_path(f)[1])})"
        for d, f in zip(data_files, stored)
    )


def create_views(con, sources: list[VersionSource]) -> list[str]:
    """The views over ``sources`` on ``con`` (see macpo.sql); returns every file path and exact
    glob they read, for the connection's sandbox."""
    import duckdb  # lazy: `macpo status` and every --help load this module; duckdb takes ~90 ms

    per_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    per_kind_facts: dict[str, list[str]] = {k: [] for k in KINDS}
    dataset_rows, subset_rows = [], []
    opened: list[str] = []
    for src in sources:
        m = src.manifest
        dataset_rows.append(
            f"SELECT {quote(src.dataset)} AS dataset, {quote(src.version)} AS version, {quote(m.get('content_hash'))} AS content_hash, "
            f"{quote(m.get('parent_hash')) if m.get('parent_hash') else 'NULL'}::VARCHAR AS parent_hash, "
            f"{quote(m.get('config_hash')) if m.get('config_hash') else 'NULL'}::VARCHAR AS config_hash, "
            f"{len(m['subsets'])} AS n_subsets, {sum(s['rows'] for s in m['subsets'].values())}::BIGINT AS n_rows, "
            f"{quote(m.get('created_at', ''))} AS created_at"
        )
        stored_facts = fact_files(src.root, m) if src.use_facts else None
        for subset, entry in m["subsets"].items():
            kind = entry["kind"]
            data = [duck_path(src.root / f) for f in entry["files"]]
            opened += [name for pair in data for name in pair]
            files = "[" + ", ".join(quote(pattern) for _, pattern in data) + "]"
            label = f"{quote(src.dataset)} AS dataset, {quote(src.version)} AS version, {quote(subset)} AS subset"
            try:
                present = _present_columns(src.root / entry["files"][0])
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"{src.dataset}/{src.version}: {entry['files'][0]} does not read as Parquet "
                                f"({str(exc).splitlines()[0][:160]}); run `macpo status --verify`") from None
            per_kind.setdefault(kind, []).append(f"SELECT {label}, {_columns(kind, present)}{_text_columns(kind)} FROM read_parquet({files})")
            facts = stored_facts and stored_facts[subset]
            if facts:
                opened += [name for f in facts for name in duck_path(f)]
            per_kind_facts.setdefault(kind, []).append(_facts_source(kind, label, [src.root / f for f in entry["files"]], facts, present))
            subset_rows.append(
                f"SELECT {quote(src.dataset)} AS dataset, {quote(src.version)} AS version, {quote(subset)} AS subset, "
                f"{quote(kind)} AS kind, {entry['rows']}::BIGINT AS n_rows, {quote(entry['content_hash'])} AS content_hash"
            )
    for kind, selects in per_kind.items():
        empty = not selects
        body = " UNION ALL ".join(selects) if selects else f"SELECT {_EMPTY_LABEL}, *{_text_columns(kind)} FROM {_empty_table(con, kind)}"
        facts_body = _facts_select(kind, _EMPTY_LABEL, _empty_table(con, kind)) if empty else " UNION ALL ".join(per_kind_facts[kind])
        try:  # binding a view reads every file's Parquet footer
            con.execute(f"CREATE VIEW {kind} AS {body}")
            con.execute(f"CREATE VIEW {kind}_facts AS {facts_body}")
        except duckdb.Error as exc:
            raise UserError(_unreadable(sources, exc)) from None
    empty_ds = (
        "SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS content_hash, NULL::VARCHAR AS parent_hash, "
        "NULL::VARCHAR AS config_hash, 0 AS n_subsets, 0::BIGINT AS n_rows, NULL::VARCHAR AS created_at WHERE false"
    )
    try:  # a manifest's row counts can add up past BIGINT
        con.execute(f"CREATE VIEW datasets AS {' UNION ALL '.join(dataset_rows) or empty_ds}")
    except duckdb.Error as exc:
        raise UserError(f"the store's manifests do not make a datasets table: {duck_error(exc)}") from None
    empty_sub = (
        "SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS subset, NULL::VARCHAR AS kind, "
        "0::BIGINT AS n_rows, NULL::VARCHAR AS content_hash WHERE false"
    )
    con.execute(f"CREATE VIEW subsets AS {' UNION ALL '.join(subset_rows) or empty_sub}")
    con.execute(
        "CREATE VIEW rounds AS SELECT dataset, CAST(regexp_extract(version, 'round-(\\d+)$', 1) AS INTEGER) AS round, "
        "version, content_hash, parent_hash, config_hash, n_rows, created_at FROM datasets WHERE regexp_matches(version, '^round-\\d+$')"
    )
    return opened


def _unreadable(sources: list[VersionSource], exc: Exception) -> str:
    """One line naming the version and file DuckDB could not read (same size, other bytes)."""
    for src in sources:
        for entry in src.manifest["subsets"].values():
            for rel in entry["files"]:
                try:
                    pq.read_schema(src.root / rel)
                except (OSError, pa.ArrowException):
                    return (f"{src.dataset}/{src.version}: {rel} does not read as Parquet "
                            f"({duck_error(exc, 200)}); run `macpo status --verify`")
    return f"cannot read the store's data: {duck_error(exc)}"
