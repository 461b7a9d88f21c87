"""audit_10m_seconds: ``macpo audit`` (every default audit) over 10M synthetic pairs.

Ours: ``macpo.audit.run_audits`` (what ``macpo audit --store DIR`` runs) over a store holding
10M pairs (ten ``round-N`` versions of 1M rows, written with ``Store.write`` and cached
under ``$MACPO_CACHE/bench``; the audits read the per-row facts Store.write keeps beside each
version, see macpo/facts.py). Baseline: DuckDB ``SELECT count(*)`` over the same Parquet
files, a floor for "touching the data at all". Target: under 5 s absolute; the ratio is
printed for information. DuckDB runs with the thread count ``macpo sql`` uses.
"""

from __future__ import annotations

import time
from pathlib import Path

import common

TARGET_SECONDS = 5.0
ROWS_PER_VERSION = 1_000_000


def build_store(root: Path, n: int) -> Path:
    """A store with ``n`` synthetic pairs, one version per million rows (reused when present)."""
    import pyarrow as pa

    import synth
    from macpo.audit import index_missing_facts
    from macpo.sql import store_sources
    from macpo.store import Store, Subset

    per = min(n, ROWS_PER_VERSION)
    store = Store(root, create=True)
    for i in range(-(-n // per)):
        version = f"round-{i + 1}"
        if store.has("bench", version):
            continue
        table = synth.pairs(min(per, n - i * per), seed=1000 + i)
        table = table.set_column(table.schema.get_field_index("round"), "round", pa.array([i + 1] * table.num_rows, pa.int32()))
        store.write("bench", version, {"default": Subset("pairs", table)})
        print(f"  built {root}/bench/{version} ({table.num_rows:,} rows)", flush=True)
    # Store.write writes the per-row facts the audits read; a store cached by an older macpo
    # (or written under another DuckDB) gets them here, before any timing, as `macpo audit` would.
    index_missing_facts(store_sources(store))
    return root


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.single_thread()
    import duckdb

    from macpo.audit import run_audits
    from macpo.builder.models import cache_root
    from macpo.store import Store

    n = 5_000 if args.smoke else 200_000 if args.quick else 10_000_000
    root = build_store(cache_root() / "bench" / f"audit-{n}", n)
    store = Store(root)
    files = [str(f) for v in store.versions("bench") for f in store.files("bench", v, "default")]
    threads = 2  # what macpo.sql.connect configures

    results = {}

    def ours():
        results["audits"] = run_audits(store)

    def baseline():
        con = duckdb.connect(config={"threads": threads})
        (count,) = con.execute("SELECT count(*) FROM read_parquet($files)", {"files": files}).fetchone()
        assert count == n, count
        con.close()

    runs = common.interleave({"ours": ours, "baseline": baseline}, common.reps(args), warmup=not args.smoke)
    ours_s, base_s = common.median(runs["ours"]), common.median(runs["baseline"])
    verdicts = {r.name: r.verdict for r in results["audits"]}
    full = n == 10_000_000
    # One figure name at every size (quick and smoke runs measure it small, and say so); the
    # absolute target only means something at 10M rows.
    common.report(
        "audit_10m_seconds",
        ratio=ours_s / base_s, ours=ours_s, baseline=base_s, unit="s", args=args,
        target=f"< {TARGET_SECONDS:g} s", met=ours_s < TARGET_SECONDS if full else None,
        runs=runs, extra={"rows": n, "duckdb_threads": threads, "verdicts": verdicts},
        rep_ratios=common.paired(runs, lambda o, b: o / b), rep_values=runs["ours"], meets=lambda s: s < TARGET_SECONDS,
        size=None if full else f"at {n:,} rows; the target is for 10,000,000",
    )
    per_audit = {}
    for name in verdicts:
        start = time.perf_counter()
        run_audits(store, names=[name])
        per_audit[name] = round(time.perf_counter() - start, 3)
    print("  per audit (s): " + ", ".join(f"{k} {v}" for k, v in per_audit.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
