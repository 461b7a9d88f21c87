"""``macpo sql``: read-only DuckDB over every dataset version of a store.

Views (one row per stored row, plus ``dataset``, ``version``, ``subset`` columns):
``pairs``, ``sft``, ``candidates``, ``prompts``, ``evals`` (one per table kind, with flat
``*_text`` columns beside the nested message lists), ``KIND_facts`` (the same rows with the
scalar columns and, instead of each message list ``M``, ``M_key`` (64-bit hash), ``M_bytes``
and ``M_blank``: see ``macpo/facts.py``), ``datasets`` (versions and hashes),
``subsets`` (row counts per subset) and ``rounds`` (the ``round-N`` versions).

Read-only is enforced by DuckDB itself, twice: only SELECT/EXPLAIN statements pass
``extract_statements``, and the connection is sandboxed to the store with
``enable_external_access=false`` + ``lock_configuration=true`` (SPEC.md, "The store").
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from macpo.cliutil import make_parser
from macpo.errors import UserError
from macpo.facts import fact_expressions, fact_files, fact_select_list, scalar_columns
from macpo.schema import KINDS, MESSAGES

ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN"}


@dataclass
class VersionSource:
    dataset: str
    version: str
    root: Path  # folder holding manifest.json
    manifest: dict


def store_sources(store, dataset: str | None = None, version: str | None = None) -> list[VersionSource]:
    out = []
    for name in store.datasets():
        if dataset is not None and name != dataset:
            continue
        for v in store.versions(name):
            if version is not None and v != version:
                continue
            out.append(VersionSource(name, v, store.path(name, v), store.manifest(name, v)))
    return out


def snapshot_sources(folder: Path, dataset: str) -> list[VersionSource]:
    """A published Hub snapshot: ``<version>/manifest.json`` + ``<version>/<subset>/*.parquet``."""
    out = []
    for manifest_path in sorted(folder.glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        out.append(VersionSource(dataset, manifest_path.parent.name, manifest_path.parent, manifest))
    return out


def _q(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


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
    import pyarrow as pa

    name = f"_empty_{kind}"
    con.register(name, pa.Table.from_pylist([], schema=KINDS[kind]))
    return name


_EMPTY_LABEL = "NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS subset"


def _facts_select(kind: str, label: str, source: str) -> str:
    """``KIND_facts`` rows computed from the text of ``source``."""
    scalars = ", ".join(f'"{c}"' for c in scalar_columns(kind))
    return f"SELECT {label}, {scalars}, {fact_select_list(kind)} FROM {source}"


def _facts_source(kind: str, label: str, data_files: list[Path], stored: list[Path] | None) -> str:
    """SELECT of one subset's ``KIND_facts`` rows: the stored facts shards side by side with the
    data shards' scalar columns when valid, else the same facts computed from the text."""
    if not stored:
        return _facts_select(kind, label, "read_parquet([" + ", ".join(_q(d.resolve()) for d in data_files) + "])")
    scalars = ", ".join(f'"{c}"' for c in scalar_columns(kind))
    names = ", ".join(name for name, _ in fact_expressions(kind))
    # POSITIONAL JOIN pairs row i of a data shard with row i of its facts shard; DuckDB still
    # reads only the columns a query uses from either side.
    return " UNION ALL ".join(
        f"SELECT {label}, {scalars}, {names} FROM (SELECT {scalars} FROM read_parquet({_q(d.resolve())})) "
        f"POSITIONAL JOIN read_parquet({_q(f.resolve())})"
        for d, f in zip(data_files, stored)
    )


def connect(sources: list[VersionSource], allowed_dirs: list[Path]):
    """A sandboxed, read-only DuckDB connection with the views over ``sources``."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    per_kind: dict[str, list[str]] = {k: [] for k in KINDS}
    per_kind_facts: dict[str, list[str]] = {k: [] for k in KINDS}
    dataset_rows, subset_rows = [], []
    for src in sources:
        m = src.manifest
        dataset_rows.append(
            f"SELECT {_q(src.dataset)} AS dataset, {_q(src.version)} AS version, {_q(m.get('content_hash'))} AS content_hash, "
            f"{_q(m.get('parent_hash')) if m.get('parent_hash') else 'NULL'}::VARCHAR AS parent_hash, "
            f"{_q(m.get('config_hash')) if m.get('config_hash') else 'NULL'}::VARCHAR AS config_hash, "
            f"{len(m['subsets'])} AS n_subsets, {sum(s['rows'] for s in m['subsets'].values())}::BIGINT AS n_rows, "
            f"{_q(m.get('created_at', ''))} AS created_at"
        )
        stored_facts = fact_files(src.root, m)
        for subset, entry in m["subsets"].items():
            kind = entry["kind"]
            files = "[" + ", ".join(_q((src.root / f).resolve()) for f in entry["files"]) + "]"
            label = f"{_q(src.dataset)} AS dataset, {_q(src.version)} AS version, {_q(subset)} AS subset"
            per_kind.setdefault(kind, []).append(f"SELECT {label}, *{_text_columns(kind)} FROM read_parquet({files})")
            per_kind_facts.setdefault(kind, []).append(
                _facts_source(kind, label, [src.root / f for f in entry["files"]], stored_facts and stored_facts[subset])
            )
            subset_rows.append(
                f"SELECT {_q(src.dataset)} AS dataset, {_q(src.version)} AS version, {_q(subset)} AS subset, "
                f"{_q(kind)} AS kind, {entry['rows']}::BIGINT AS n_rows, {_q(entry['content_hash'])} AS content_hash"
            )
    for kind, selects in per_kind.items():
        empty = not selects
        body = " UNION ALL ".join(selects) if selects else f"SELECT {_EMPTY_LABEL}, *{_text_columns(kind)} FROM {_empty_table(con, kind)}"
        con.execute(f"CREATE VIEW {kind} AS {body}")
        facts_body = _facts_select(kind, _EMPTY_LABEL, _empty_table(con, kind)) if empty else " UNION ALL ".join(per_kind_facts[kind])
        con.execute(f"CREATE VIEW {kind}_facts AS {facts_body}")
    empty_ds = (
        "SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS content_hash, NULL::VARCHAR AS parent_hash, "
        "NULL::VARCHAR AS config_hash, 0 AS n_subsets, 0::BIGINT AS n_rows, NULL::VARCHAR AS created_at WHERE false"
    )
    con.execute(f"CREATE VIEW datasets AS {' UNION ALL '.join(dataset_rows) or empty_ds}")
    empty_sub = (
        "SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS version, NULL::VARCHAR AS subset, NULL::VARCHAR AS kind, "
        "0::BIGINT AS n_rows, NULL::VARCHAR AS content_hash WHERE false"
    )
    con.execute(f"CREATE VIEW subsets AS {' UNION ALL '.join(subset_rows) or empty_sub}")
    con.execute(
        "CREATE VIEW rounds AS SELECT dataset, CAST(regexp_extract(version, 'round-(\\d+)$', 1) AS INTEGER) AS round, "
        "version, content_hash, parent_hash, config_hash, n_rows, created_at FROM datasets WHERE regexp_matches(version, '^round-\\d+$')"
    )
    dirs = "[" + ", ".join(_q(str(Path(d).resolve()) + "/") for d in allowed_dirs) + "]"
    con.execute(f"SET allowed_directories={dirs}")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def check_read_only(con, sql: str):
    """Parse ``sql`` into statements; refuse anything but SELECT/EXPLAIN."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"SQL does not parse: {str(exc).splitlines()[0]}") from None
    if not statements:
        raise UserError("no SQL statement given")
    for st in statements:
        kind = st.type.name
        if kind not in ALLOWED_STATEMENTS:
            raise UserError(f"refused: {kind} statements are not allowed; macpo sql is read-only (SELECT/EXPLAIN only)")
    return statements


def run_query(con, sql: str):
    """Run read-only SQL; return (column names, rows) of each statement."""
    import duckdb

    results = []
    for st in check_read_only(con, sql):
        try:
            rel = con.execute(st.query)
            cols = [d[0] for d in rel.description or []]
            results.append((cols, rel.fetchall()))
        except duckdb.Error as exc:
            raise UserError(f"query failed: {str(exc).splitlines()[0]}") from None
    return results


def open_store(store_dir: str, hub: list[str] | None = None, dataset: str | None = None, version: str | None = None):
    from macpo.store import Store

    store = Store(store_dir)
    sources = store_sources(store, dataset, version)
    allowed = [store.root]
    for ref in hub or []:
        from macpo.builder.publish import snapshot

        folder, _sha = snapshot(ref)
        name = ref.partition("@")[0].replace("/", "--")
        sources += snapshot_sources(Path(folder), name)
        allowed.append(Path(folder))
    return connect(sources, allowed)


def _cell(v):
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return "" if v is None else str(v)


def print_result(cols, rows, fmt: str, out=sys.stdout) -> None:
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(cols)
        w.writerows([[_cell(v) for v in r] for r in rows])
    elif fmt == "json":
        json.dump([dict(zip(cols, r)) for r in rows], out, ensure_ascii=False, default=str, indent=1)
        out.write("\n")
    else:
        cells = [[_cell(v).replace("\n", "\\n") for v in r] for r in rows]
        cells = [[c if len(c) <= 60 else c[:57] + "..." for c in r] for r in cells]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
        line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
        out.write(line(cols) + "\n" + "-+-".join("-" * w for w in widths) + "\n")
        for r in cells:
            out.write(line(r) + "\n")
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def main(argv: list[str]) -> int:
    p = make_parser("sql", __doc__)
    p.add_argument("query", help="SQL: SELECT or EXPLAIN only")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"], help="output format")
    p.add_argument("--hub", action="append", metavar="ORG/NAME[@REV]", help="also attach a published Hub dataset (local snapshot)")
    args = p.parse_args(argv)
    con = open_store(args.store, args.hub)
    for cols, rows in run_query(con, args.query):
        print_result(cols, rows, args.format)
    return 0


if __name__ == "__main__":
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["sql", *sys.argv[1:]]))
