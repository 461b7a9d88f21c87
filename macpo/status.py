"""``macpo status``: what a store holds — datasets, versions, row counts, content hashes.

Every run checks each version's manifest and its files' sizes (cheap). ``--verify`` also
re-reads every version: each file's sha256 against its manifest, then each subset's rows
re-hashed against its content hash. Any damage (a byte flipped, a shard replaced by other
valid rows, a file missing) is named per version and file, and the command exits 2.

Temporary ``.tmp-*`` folders left by a killed writer are listed; the next write to that
dataset removes them. So are the ``.facts-tmp-*`` folders of an audit killed while indexing a
version; the next audit removes them. ``--verify`` also checks the facts the audits read
(each facts shard's sha256, and the facts recomputed from the data).

``--json`` is strict JSON: a NaN or infinity found in a manifest is printed as null. For a store made by ``macpo run``, status also shows where the run
stands (the run's ``run-state.json`` next to the store, written by the orchestrator).
"""

from __future__ import annotations

import json
import math
import sys

from macpo.cliutil import make_parser, run_script
from macpo.errors import UserError
from macpo.sql import escape_text
from macpo.store import Store


def collect(store, verify: bool = False) -> dict:
    out = {"store": str(store.root), "verified": verify, "datasets": []}
    names = store.datasets()
    bar = None
    if verify:
        from tqdm.auto import tqdm  # only --verify shows progress; tqdm.auto costs ~60 ms at import

        total = sum(len(store.versions(n)) for n in names)
        bar = tqdm(total=total, desc="verifying", unit="version", file=sys.stderr, disable=None, leave=False)
    for name in names:
        versions = []
        for v in store.versions(name):
            try:
                m = store.manifest(name, v)
            except UserError as exc:
                versions.append({"version": v, "error": str(exc)})
                if bar is not None:
                    bar.update(1)
                continue
            entry = {
                "version": v,
                "content_hash": m["content_hash"],
                "parent_hash": m.get("parent_hash"),
                "created_at": m.get("created_at"),
                "subsets": {s: {"kind": e["kind"], "rows": e["rows"]} for s, e in m["subsets"].items()},
            }
            if verify:
                entry["damage"] = store.verify(name, v)
                bar.update(1)
            else:  # the cheap check every reader makes: missing or resized files
                entry["damage"] = store.size_problems(name, v, m)
            versions.append(entry)
        out["datasets"].append({"name": name, "versions": versions})
    if bar is not None:
        bar.close()
    out["stale_tmp"] = [str(p.relative_to(store.root)) for p in store.stale_tmp()]
    state = store.root / "run-state.json"
    if state.exists():
        out["run"] = _run_state(state)
    return out


def _run_state(path) -> dict:
    """The run state for display; a damaged one is reported (``{"error"}``), never a traceback:
    status is what a user runs to find out what is wrong."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return {"error": f"{path.name} is unreadable ({type(exc).__name__}); `macpo run` will refuse it until it is deleted"}
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not all(isinstance(st, dict) and isinstance(st.get("name"), str) for st in steps):
        return {"error": f"{path.name} is not a macpo run state; `macpo run` will refuse it until it is deleted"}
    return data


def problems(info: dict) -> list[str]:
    """``NAME/VERSION (what is wrong; ...)`` of every version with an invalid manifest or damage."""
    out = []
    for ds in info["datasets"]:
        for v in ds["versions"]:
            if v.get("error"):
                out.append(v["error"])
            elif v.get("damage"):
                out.append(f"{ds['name']}/{v['version']} ({'; '.join(v['damage'])})")
    return out


def _strict(value):
    """``value`` with every non-finite float as None, so ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def render(info: dict) -> str:
    return "\n".join(escape_text(line) for line in _render(info))  # names from disk never drive the terminal


def _render(info: dict) -> list[str]:
    lines = [f"store {info['store']}"]
    if not info["datasets"]:
        lines.append("  (empty)")
    for ds in info["datasets"]:
        lines.append(f"  {ds['name']}")
        for v in ds["versions"]:
            if v.get("error"):
                lines.append(f"    {v['version']:<10} INVALID  {v['error']}")
                continue
            subsets = ", ".join(f"{s}={e['rows']}" for s, e in v["subsets"].items())
            mark = "  DAMAGED" if v.get("damage") else ("  verified" if info.get("verified") else "")
            lines.append(f"    {v['version']:<10} {v['content_hash'][:23]}  {str(v['created_at'] or ''):<20}  {subsets}{mark}")
            for problem in v.get("damage") or []:
                lines.append(f"      ! {problem}")
    for tmp in info.get("stale_tmp", []):
        if "/.facts-" in tmp:
            lines.append(f"  stale temporary folder {tmp} (left by a killed audit; the next audit removes it)")
        else:
            lines.append(f"  stale temporary folder {tmp} (left by a killed writer; the next write removes it)")
    run = info.get("run")
    if run and run.get("error"):
        lines.append(f"run state: {run['error']}")
    elif run:
        done = sum(1 for s in run.get("steps", []) if s.get("status") == "done")
        lines.append(f"run {run.get('name', '?')}: {done}/{len(run.get('steps', []))} steps done")
        for s in run.get("steps", []):
            lines.append(f"  [{'x' if s.get('status') == 'done' else ' '}] {s['name']}")
    return lines


def main(argv: list[str]) -> int:
    p = make_parser("status", __doc__)
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument("--verify", action="store_true",
                   help="recompute every file's sha256 and every subset's content hash; exit 2 on damage")
    args = p.parse_args(argv)
    info = collect(Store(args.store), verify=args.verify)
    print(json.dumps(_strict(info), indent=1, allow_nan=False) if args.json else render(info), flush=True)
    bad = problems(info)
    if bad:
        raise UserError(f"{len(bad)} damaged or invalid version{'s' if len(bad) != 1 else ''}: " + " | ".join(bad))
    return 0


if __name__ == "__main__":
    run_script("macpo status", main)
