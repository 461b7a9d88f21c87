"""Run every benchmark script and write the table to benchmarks/README.md.

    python benchmarks/run_all.py            # full: tiny models + SmolLM2, 1M/10M rows, demo
    python benchmarks/run_all.py --quick    # tiny models and small tables, under 3 minutes
    python benchmarks/run_all.py --smoke    # one tiny iteration of each (what CI runs)

Each script runs in its own process, one after another (never two at once: they would time
each other). Results are appended to benchmarks/results.jsonl; a full run rebuilds the README
tables from its rows (quick and smoke runs leave the full run's tables alone). Every mode prints every figure (quick and smoke at
small sizes, saying so on the line); a figure a script did not print fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["materialize", "audit", "scoring", "generation", "generation_vllm", "build_ray", "build_ray_model_loads", "dpo", "demo"]
# Scripts that need vLLM run in the vLLM venv (`make vllm`) when it exists; otherwise they print "skipped".
VLLM_PYTHON = {"generation_vllm": HERE.parent / ".venv-vllm" / "bin" / "python"}
README = HERE / "README.md"
DOCS_PAGE = HERE.parent / "docs" / "benchmarks.md"
SCRIPT_FIGURES = ["materialize", "audit", "scoring", "generation", "build", "dpo", "demo"]  # figure-name prefixes, table order
# What each script prints, one line per figure (and per model); demo is skipped with --smoke.
FIGURES = {
    "materialize": ["materialize_rows_per_s"],
    "audit": ["audit_10m_seconds"],
    "scoring": ["scoring_vs_limit", "scoring_tokens_per_s"],
    "generation": ["generation_tokens_per_s"],
    "generation_vllm": ["generation_vllm_vs_transformers", "vllm_engine_start_seconds"],
    "build_ray": ["build_ray_speedup", "build_ray_machine_ceiling", "build_ray_of_ceiling", "build_ray_time_split", "build_ray_startup_seconds"],
    "build_ray_model_loads": ["build_ray_model_loads"],
    "dpo": ["dpo_steps_per_s", "dpo_bound", "dpo_peak_rss_lora", "dpo_peak_rss_full"],
    "demo": ["demo_wall_seconds"],
}
PRINTED = re.compile(r"^(?P<name>[a-z][a-z0-9_]*): ")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny models and small sizes (< 3 minutes)")
    mode.add_argument("--smoke", action="store_true", help="one tiny iteration of each script")
    p.add_argument("--only", nargs="*", choices=SCRIPTS, help="run only these scripts")
    p.add_argument("--no-readme", action="store_true",
                   help="do not rewrite the tables of benchmarks/README.md and docs/benchmarks.md after a full run")
    p.add_argument("--readme-only", action="store_true",
                   help="only rebuild the README table from the latest full-run rows of results.jsonl")
    args = p.parse_args(argv)
    results = Path(os.environ.get("MACPO_BENCH_RESULTS") or HERE / "results.jsonl")
    if args.readme_only:
        rows = latest_rows(results, "quick" if args.quick else "full")
        write_readme(rows, "quick" if args.quick else "full", None)
        print(table(rows))
        return 0
    flags = ["--quick"] if args.quick else ["--smoke"] if args.smoke else []
    run_id = os.environ.get("MACPO_BENCH_RUN") or uuid.uuid4().hex[:12]
    env = dict(os.environ, MACPO_BENCH_RUN=run_id)
    started = time.time()
    failed, missing = [], []
    for name in args.only or SCRIPTS:
        t0 = time.time()
        python = VLLM_PYTHON[name] if name in VLLM_PYTHON and VLLM_PYTHON[name].is_file() else sys.executable
        proc = subprocess.run([str(python), str(HERE / f"{name}.py"), *flags], env=env, stdout=subprocess.PIPE, text=True)
        printed = set()
        for line in proc.stdout.splitlines():
            if line.strip():
                print(line, flush=True)
                if m := PRINTED.match(line):
                    printed.add(m.group("name"))
        print(f"  [{name}: {time.time() - t0:.0f} s]", flush=True)
        if proc.returncode != 0:
            failed.append(name)
        missing += [f for f in FIGURES[name] if f not in printed]
    print(f"total {time.time() - started:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; figures not printed: {', '.join(missing)}" if missing else ""))
    if not args.smoke and not args.quick and not args.no_readme:
        rows = load_rows(results, run_id)
        if rows:
            write_readme(rows, "quick" if args.quick else "full", time.time() - started)
    return 1 if failed or missing else 0


def load_rows(path: Path, run_id: str) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("run_id") == run_id]


def latest_rows(path: Path, mode: str) -> list[dict]:
    """The newest row of each (figure, model) among ``mode`` runs, in script order."""
    if not path.is_file():
        return []
    latest: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("mode") == mode:
                latest[(row["figure"], row.get("model"))] = row
    order = {name: i for i, name in enumerate(SCRIPT_FIGURES)}
    return sorted(latest.values(), key=lambda r: (order.get(r["figure"].split("_")[0], 99), r["figure"], r.get("model") or ""))


def _num(value, unit) -> str:
    if value is None:
        return "—"
    if unit == "s":
        return f"{value:.3g} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"


def table(rows: list[dict]) -> str:
    lines = ["| figure | model / size | ours | baseline | ratio (min / median / max) | target | met | git |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| `{r['figure']}` | | | | | | skipped: {r['skipped']} | {(r.get('git_sha') or '')[:7]} |")
            continue
        size = r.get("model") or (f"{r['rows']:,} rows" if r.get("rows") else "") or (f"`{r['config']}`" if r.get("config") else "")
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.3g}"
        if r.get("ratio_spread"):  # lowest, median and highest single-repetition ratio
            ratio += " ({:.3g} / {:.3g} / {:.3g})".format(*r["ratio_spread"])
        if r.get("cpu_ratio") is not None:  # materialize: what one core would give, and the cores ours had
            ratio += f" (CPU time {r['cpu_ratio']:.2f}; ours on {r['ours_cores_used']:.2f} cores)"
        if r["figure"] == "dpo_steps_per_s":
            ratio += f" (bound {r['bound']:.3g}, {r['of_bound']:.2f} of it; Δloss ≤ {r['max_loss_diff']:.1e})"
        ours = _num(r.get("ours"), r["unit"])
        if r.get("ours_spread"):
            ours += " ({} / {} / {})".format(*(_num(v, r["unit"]) for v in r["ours_spread"]))
        elif not r.get("ratio_spread"):  # one measurement (a single demo run, an engine start)
            ours += " (1 run)"
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        if r.get("noise"):
            met += " (within the spread: noise)"
        target = (r.get("target") or "").split(" (")[0]
        lines.append(f"| `{r['figure']}` | {size} | {ours} | {_num(r.get('baseline'), r['unit'])} "
                     f"| {ratio} | {target} | {met} | {(r.get('git_sha') or '')[:7]} |")
    return "\n".join(lines)


def write_readme(rows: list[dict], mode: str, seconds: float | None) -> None:
    # Rows of several runs may be mixed (a full run, then a rerun of some scripts): say which.
    newest = max(rows, key=lambda r: r.get("time") or "")
    oldest = min(rows, key=lambda r: r.get("time") or "")
    m = newest.get("machine", {})
    # Everything above the marker is hand-written (scripts, method, analysis) and kept as it is.
    header = README.read_text().split("<!-- results -->")[0] if README.is_file() else ""
    header = header or "# Benchmarks\n\n"
    body = (
        f"<!-- results -->\n## Latest results ({mode} run)\n\n"
        f"Measured {oldest.get('time')} to {newest.get('time')}, up to git `{(newest.get('git_sha') or '')[:12]}` (each "
        f"row's commit in its last column); {m.get('cores')} cores, torch threads {m.get('torch_threads')}, load average "
        f"{m.get('load_avg')} at the newest row" + (f", {seconds / 60:.1f} min in all" if seconds else "") + ". "
        f"Ratios are ratios of the medians of {_reps(rows)} interleaved repetitions (A B A B …); in brackets the lowest, "
        f"median and highest ratio of a single repetition. Absolute numbers move with the machine's load.\n\n"
        f"{table(rows)}\n"
    )
    README.write_text(header.rstrip() + "\n\n" + body)
    # docs/benchmarks.md shows the same table between two markers.
    top = DOCS_PAGE
    if top.is_file() and TOP_START in (text := top.read_text()) and TOP_END in text:
        before, rest = text.split(TOP_START, 1)
        top.write_text(before + TOP_START + "\n" + table(rows) + "\n" + TOP_END + rest.split(TOP_END, 1)[1])


def _reps(rows: list[dict]) -> str:
    counts = sorted({r["reps"] for r in rows if r.get("reps") and r.get("ratio") is not None})
    return "/".join(map(str, counts)) or "?"


TOP_START, TOP_END = "<!-- benchmark-table -->", "<!-- /benchmark-table -->"


if __name__ == "__main__":
    raise SystemExit(main())
