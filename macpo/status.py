"""``macpo status``: what a store holds — datasets, versions, row counts, content hashes.

For a store made by ``macpo run``, it also shows where the run stands (the run's
``run-state.json`` next to the store, written by the orchestrator).
"""

from __future__ import annotations

import json
import sys

from macpo.cliutil import make_parser


def collect(store) -> dict:
    out = {"store": str(store.root), "datasets": []}
    for name in store.datasets():
        versions = []
        for v in store.versions(name):
            m = store.manifest(name, v)
            versions.append(
                {
                    "version": v,
                    "content_hash": m["content_hash"],
                    "parent_hash": m.get("parent_hash"),
                    "created_at": m.get("created_at"),
                    "subsets": {s: {"kind": e["kind"], "rows": e["rows"]} for s, e in m["subsets"].items()},
                }
            )
        out["datasets"].append({"name": name, "versions": versions})
    state = store.root / "run-state.json"
    if state.is_file():
        out["run"] = json.loads(state.read_text())
    return out


def render(info: dict) -> str:
    lines = [f"store {info['store']}"]
    if not info["datasets"]:
        lines.append("  (empty)")
    for ds in info["datasets"]:
        lines.append(f"  {ds['name']}")
        for v in ds["versions"]:
            subsets = ", ".join(f"{s}={e['rows']}" for s, e in v["subsets"].items())
            lines.append(f"    {v['version']:<10} {v['content_hash'][:23]}  {v['created_at'] or '':<20}  {subsets}")
    run = info.get("run")
    if run:
        done = sum(1 for s in run.get("steps", []) if s.get("status") == "done")
        lines.append(f"run {run.get('name', '?')}: {done}/{len(run.get('steps', []))} steps done")
        for s in run.get("steps", []):
            lines.append(f"  [{'x' if s.get('status') == 'done' else ' '}] {s['name']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = make_parser("status", __doc__)
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    args = p.parse_args(argv)
    from macpo.store import Store

    info = collect(Store(args.store))
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


if __name__ == "__main__":
    from macpo.cli import main as cli_main

    raise SystemExit(cli_main(["status", *sys.argv[1:]]))
