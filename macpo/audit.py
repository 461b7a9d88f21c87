"""``macpo audit``: named data-quality audits, each one SQL file.

An audit is a ``.sql`` file over the read-only views of ``macpo sql`` returning rows with
``count``, ``verdict`` (ok / warn / fail / info / n/a) and ``detail``, and optionally ``scope``.
The built-in audits return one row per dataset version (``dataset/version``; per dataset where
only the latest version counts) and the store-wide row (scope ``all``) last, so one biased
dataset is not averaged away by the others. An audit that had nothing to check says ``n/a``
with the reason in its detail, never ``ok``. When only one version is in scope its row is the
store-wide one and is printed alone. The built-in audits live in ``macpo/audits/``; add your
own with ``--audits-dir DIR`` or by dropping ``*.sql`` files into ``STORE/.audits/`` (a row
without ``scope`` is store-wide). The leading ``--`` comment lines are the description.

The built-in audits read the ``*_facts`` views (per-row keys, byte lengths and blank flags of
the message columns, written beside each version by ``Store.write``), not the text. Versions
stored without them are indexed once, on first audit.
"""

from __future__ import annotations

import decimal
import json
import math
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa

from macpo.cliutil import make_parser, run_script
from macpo.errors import UserError
from macpo.facts import WRITE_ERRNOS, check_facts, ensure_facts, remove_stale_tmp
from macpo.sql import check_read_only, connect, stream_query
from macpo.sql_limits import add_resource_flags, resource_args
from macpo.sql_views import escape_text, store_sources
from macpo.store import Store


@dataclass
class AuditResult:
    name: str
    count: int
    verdict: str
    detail: str
    description: str
    scope: str = "all"  # "dataset/version", or "all" for the store-wide line


@dataclass
class Audit:
    name: str
    sql: str

    @property
    def description(self) -> str:
        lines = [l[2:].strip() for l in self.sql.splitlines() if l.startswith("--")]
        return " ".join(l for l in lines if not l.startswith("verdict:"))


def available_audits(extra_dirs: list[Path] | None = None) -> dict[str, Audit]:
    audits = {}
    builtin = resources.files("macpo.audits")
    for entry in sorted(builtin.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            audits[entry.name[:-4]] = Audit(entry.name[:-4], entry.read_text())
    for folder in extra_dirs or []:
        for path in sorted(Path(folder).glob("*.sql")):
            if not path.is_file():  # a folder named x.sql is no audit
                continue
            try:
                audits[path.stem] = Audit(path.stem, path.read_bytes().decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise UserError(f"audit file {path} is not UTF-8 text (byte {exc.start}); fix or remove it") from None
            except OSError as exc:
                raise UserError(f"cannot read audit file {path}: {exc.strerror}") from None
    return audits


def index_missing_facts(sources) -> None:
    """Write the per-row facts of versions stored before facts existed (or by another DuckDB),
    once, so this and later audits read narrow columns instead of the text. Stored facts are
    used only when every shard's sha256 matches ``facts.json``; others are rebuilt (with a note),
    or, in a store that cannot be written, computed from the text."""
    missing = []
    for src in sources:
        remove_stale_tmp(src.root)  # left by audits killed while indexing
        paths, problem = check_facts(src.root, src.manifest, hash_files=True)
        if problem:
            print(f"macpo audit: note: {src.dataset}/{src.version}: its facts do not match ({problem}); "
                  "rebuilding them from the data", file=sys.stderr)
        if paths is None:
            missing.append(src)
    if not missing:
        return
    from tqdm.auto import tqdm  # lazy: ~60 ms to import (a third of `macpo audit --help`); only indexing shows a bar

    shards = sum(len(e["files"]) for src in missing for e in src.manifest["subsets"].values())
    with tqdm(total=shards, desc=f"indexing {len(missing)} version(s) for audits", unit="shard", file=sys.stderr, leave=False, disable=None) as bar:
        for src in missing:
            try:
                ensure_facts(src.root, src.manifest, progress=lambda: bar.update(1))
            except OSError as exc:
                if exc.errno not in WRITE_ERRNOS:
                    raise UserError(f"{src.dataset}/{src.version}: cannot read its data ({str(exc).splitlines()[0][:200]}); "
                                    f"run `macpo status --verify`") from None
                # A read-only or full store: the audits compute the facts from the text.
                src.use_facts = False
                print(f"macpo audit: note: cannot index {src.dataset}/{src.version} ({exc.strerror}); auditing from the text", file=sys.stderr)
            except pa.ArrowException as exc:  # the data itself does not read back
                raise UserError(f"{src.dataset}/{src.version}: cannot read its data ({str(exc).splitlines()[0][:200]}); "
                                f"run `macpo status --verify`") from None


def _count(name: str, value) -> int:
    """An audit's ``count`` as an int: NULL is 0; a whole number from 0 to 2**63-1 (an integral
    float or decimal too); anything else (text, NaN, a fraction, an overflow) is one line."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        whole = value
    elif isinstance(value, (float, decimal.Decimal)) and math.isfinite(value) and value == int(value):
        whole = int(value)
    else:
        whole = None
    if whole is None or not 0 <= whole < 2**63:
        raise UserError(f"audit {name} returned count {escape_text(repr(value))[:80]}; it must be a whole number from 0 to 2**63-1")
    return whole


MAX_AUDIT_ROWS = 10_000  # lines of one audit: one per dataset version, plus the store


def run_audits(store, dataset=None, version=None, names=None, extra_dirs=None, memory_limit=None, threads=None,
               max_spill=None) -> list[AuditResult]:
    """Run audits over ``store`` (a Store), optionally restricted to one dataset/version."""
    dirs = list(extra_dirs or [])
    if (store.root / ".audits").is_dir():
        dirs.append(store.root / ".audits")
    audits = available_audits(dirs)
    selected = list(audits) if not names else list(names)
    unknown = [n for n in selected if n not in audits]
    if unknown:
        raise UserError(f"unknown audit(s) {', '.join(unknown)} (available: {', '.join(audits)})")
    if dataset is not None:
        store.resolve(dataset, version)
    sources = store_sources(store, dataset, version)
    index_missing_facts(sources)
    con = connect(sources, memory_limit=memory_limit, threads=threads, max_spill=max_spill)
    results = []
    try:  # closed on the way out, Ctrl-C included: no DuckDB work left running at exit
        for name in selected:
            audit = audits[name]
            statements = check_read_only(con, audit.sql)
            cols, rows = [], []
            try:  # in a worker thread, so Ctrl-C stops a long user audit at once
                for cols, batch in stream_query(con, statements[-1].query, max_rows=MAX_AUDIT_ROWS):
                    rows += batch
            except UserError as exc:  # a user-written audit with a SQL error
                raise UserError(f"audit {name} failed: {str(exc).removeprefix('query failed: ')}") from None
            if not rows:
                raise UserError(f"audit {name} returned no row; it must return one row with columns count and verdict")
            missing = {"count", "verdict"} - set(cols)
            if missing:
                raise UserError(f"audit {name} must return columns count and verdict (missing: {', '.join(sorted(missing))})")
            lines = [AuditResult(name, _count(name, r["count"]), str(r["verdict"]), str(r.get("detail") or ""), audit.description,
                                 str(r.get("scope") or "all")) for r in (dict(zip(cols, row)) for row in rows)]
            scoped = [r for r in lines if r.scope != "all"]
            if len(scoped) == 1 and len(lines) == 2:  # one version in scope: its line is the store-wide one
                lines = scoped
            results += sorted(lines, key=lambda r: r.scope == "all")  # stable: the store-wide line last
    finally:
        con.close()
    return results


def main(argv: list[str]) -> int:
    p = make_parser("audit", __doc__)
    p.add_argument("names", nargs="*", metavar="NAME", help="audits to run (default: all)")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--dataset", help="only this dataset")
    p.add_argument("--version", help="only this version (with --dataset)")
    p.add_argument("--audits-dir", action="append", type=Path, default=[], help="extra folder of *.sql audits")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--list", action="store_true", help="list available audits and exit")
    p.add_argument("--strict", action="store_true", help="exit 1 when any audit fails")
    add_resource_flags(p)
    args = p.parse_args(argv)
    if args.version and not args.dataset:
        raise UserError("--version needs --dataset")
    store = Store(args.store)
    if args.list:
        for a in available_audits(args.audits_dir + ([store.root / ".audits"] if (store.root / ".audits").is_dir() else [])).values():
            print(f"{a.name:<24} {a.description}")
        return 0
    results = run_audits(store, args.dataset, args.version, args.names, args.audits_dir, **resource_args(args))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        width = max(len(r.name) for r in results)
        scope_width = max(len(r.scope) for r in results)
        for r in results:
            print(f"{r.name:<{width}}  {r.verdict.upper():<4}  {r.scope:<{scope_width}}  count={r.count}  {r.detail}".rstrip())
    return 1 if args.strict and any(r.verdict == "fail" for r in results) else 0


if __name__ == "__main__":
    run_script("macpo audit", main)
