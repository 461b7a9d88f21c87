"""Reading a study's runs into its tables: ``study.md`` (one line per variant: the result agent's
gold scores, mean over seeds with a bootstrap 95% interval over seeds and test prompts, PGR, and
the paired difference against naive weak-to-strong), ``study.csv`` and ``study.json``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from macpo.eval import stats
from macpo.eval.report import ceiling_agent, collect, gold_module, read_gates
from macpo.eval.stats import pgr
from macpo.layout import RunLayout
from macpo.run.cache import Tally
from macpo.run.study.plots import plot_study
from macpo.run.study.variants import BASELINE, VARIANTS, Variant
from macpo.store import Store


@dataclass
class RunResult:
    variant: str
    seed: int
    out: Path
    rows: list[dict]  # report rows: round, agent, helpful, harmless, combined, ...
    responses: dict[tuple[int, str], dict[str, str]]  # (round, agent) -> prompt_id -> response text
    weak: str = "teacher-0"  # the weak-label teacher


def read_run(variant: str, seed: int, cfg) -> RunResult:
    rows, _, _ = collect(cfg)
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    responses: dict[tuple[int, str], dict[str, str]] = {}
    for version in store.versions(layout.evals_dataset):
        table = store.read(layout.evals_dataset, version, "default")
        for r, a, pid, resp in zip(*(table.column(c).to_pylist() for c in ("round", "agent", "prompt_id", "response"))):
            responses.setdefault((r, a), {})[pid] = resp[-1]["content"] if resp else ""
    return RunResult(variant, seed, layout.out, rows, responses, weak=f"teacher-{cfg.weak_label_teacher}")


def result_cell(v: Variant, run: RunResult) -> tuple[int, str] | None:
    """(round, agent) of a variant's result in one run: the named agent at its round (or the last)."""
    agents = {a for (_, a) in run.responses}
    agent = v.agent if v.agent in agents else next((a for a in sorted(agents) if v.agent in a), None)
    if agent is None:
        return None
    rounds = sorted(r for (r, a) in run.responses if a == agent)
    round_ = v.round if v.round is not None else rounds[-1]
    return (round_, agent) if (round_, agent) in run.responses else None



def _gold_inputs(cfg):
    """(gold module, test prompt ids, their metas, task per prompt) of the study's world."""
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    module = gold_module(store, layout.data_dataset)
    name, version = store.resolve(layout.data_dataset)
    test = store.read(name, version, cfg.eval.split)
    ids = test.column("prompt_id").to_pylist()
    metas = [json.loads(m) if isinstance(m, str) else m for m in test.column("meta").to_pylist()]  # parsed once, not per draw
    return module, ids, metas, [m.get("task", "") for m in metas]


def summarize_variants(read: list[RunResult], variants: list[str], seeds: list[int], gold, *, n_boot: int = 1000) -> list[dict]:
    """Per variant: mean over seeds and bootstrap 95% intervals of helpful/harmless/combined of its
    result cell, PGR, and the paired difference in combined against the baseline (same draws)."""
    # gold: one (module, ids, metas, tasks) for a fixed world, or {seed: ...} when the world varies
    golds = gold if isinstance(gold, dict) else {s: gold for s in seeds}
    module = golds[seeds[0]][0]
    by = {(r.variant, r.seed): r for r in read}
    if all(golds[s][1] == golds[seeds[0]][1] for s in seeds):  # one test set: prompts crossed with seeds
        draws = stats.draws(len(seeds), len(golds[seeds[0]][1]), n_boot=n_boot, rng_seed=0, strata=golds[seeds[0]][3])
    else:  # a world per seed: prompts nested in seeds, resampled within each seed's test set
        draws = stats.nested_draws([golds[s][3] for s in seeds], n_boot=n_boot, rng_seed=0)
    cache: dict[tuple, dict] = {}
    # Each response is scored once and a bootstrap replicate only re-aggregates the scores: scoring
    # inside every replicate (1,000 draws x seeds x variants) took ~5 min for 21 variants x 3 seeds.
    aggregate_scores = getattr(module, "aggregate_scores", None)
    per_prompt: dict[tuple[str, int], list[dict | None]] = {}

    def scores(variant: str, seed_index: int, idx) -> dict | None:
        run = by.get((variant, seeds[seed_index]))
        cell = result_cell(VARIANTS[variant], run) if run else None
        if cell is None:
            return None
        _, ids, metas, _ = golds[seeds[seed_index]]
        resp = run.responses[cell]
        key = (variant, seed_index, None if idx is None else idx.tobytes())
        if key not in cache:
            pick = range(len(ids)) if idx is None else idx
            if any(ids[j] not in resp for j in pick):
                return None
            if aggregate_scores is None:  # a gold module without per-prompt scores
                cache[key] = module.aggregate([metas[j] for j in pick], [resp[ids[j]] for j in pick])
            else:
                if (variant, seed_index) not in per_prompt:
                    per_prompt[(variant, seed_index)] = [module.gold_reward(m, resp[i]) if i in resp else None
                                                         for i, m in zip(ids, metas)]
                one = per_prompt[(variant, seed_index)]
                cache[key] = aggregate_scores([metas[j] for j in pick], [one[j] for j in pick])
        return cache[key]

    def reps(variant: str, metric: str):
        return stats.replicate(lambda s, idx: (scores(variant, s, idx) or {}).get(metric), draws)

    def point(variant: str, metric: str):
        vals = [(scores(variant, s, None) or {}).get(metric) for s in range(len(seeds))]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    out = []
    base_reps = reps(BASELINE, "combined") if BASELINE in variants else None
    for v in variants:
        row = {"variant": v, "help": VARIANTS[v].help, "seeds": sum((v, s) in by for s in seeds)}
        for metric in ("helpful", "harmless", "combined"):
            r = reps(v, metric)
            row[metric] = stats.interval(point(v, metric), r)
            if metric == "combined":
                comb_reps = r
        row["diff_vs_baseline"] = (stats.paired_difference(point(v, "combined"), point(BASELINE, "combined"), comb_reps, base_reps)
                                   if base_reps is not None and v != BASELINE else stats.Interval(None, None, None))
        pgrs = [x["pgr"] for s in seeds if (v, s) in by for x in [_cell_row(by[(v, s)], v)] if x and x.get("pgr") is not None]
        row["pgr"] = sum(pgrs) / len(pgrs) if pgrs else None
        cells = [result_cell(VARIANTS[v], by[(v, s)]) for s in seeds if (v, s) in by]
        row["round"] = cells[0][0] if cells and cells[0] else None
        out.append(row)
    return out


def _cell_row(run: RunResult, variant: str) -> dict | None:
    cell = result_cell(VARIANTS[variant], run)
    return next((r for r in run.rows if cell and (r["round"], r["agent"]) == cell), None)


def study_rows(read: list[RunResult], baseline_by_seed: dict[int, RunResult]) -> list[dict]:
    """study.csv: one row per (variant, seed, round, agent), PGR against the seed's baseline run's
    weak-label teacher and ceiling when the run itself evaluated neither (self-play runs)."""
    rows = []
    for run in read:
        ref = baseline_by_seed.get(run.seed, run)
        pick = lambda rs, agent: next((r.get("combined") for r in rs if r["round"] == 0 and r["agent"] == agent), None)  # noqa: E731
        weak = pick(run.rows, run.weak) if pick(run.rows, run.weak) is not None else pick(ref.rows, ref.weak)
        ceil_name = ceiling_agent(run.rows) or ceiling_agent(ref.rows)
        ceiling = (pick(run.rows, ceil_name) if ceil_name and pick(run.rows, ceil_name) is not None
                   else pick(ref.rows, ceil_name) if ceil_name else None)
        for r in sorted(run.rows, key=lambda r: (r["round"], r["agent"] != "student", r["agent"])):
            rows.append({"variant": run.variant, "seed": run.seed, "round": r["round"], "agent": r["agent"],
                         "helpful": r.get("helpful"), "harmless": r.get("harmless"), "combined": r.get("combined"),
                         "pgr": pgr(r.get("combined"), weak, ceiling) if r["agent"] == "student" else None})
    return rows


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def write_study(out: Path, read: list[RunResult], variants: list[str], seeds: list[int], tally: Tally, wall: float,
                *, n_boot: int, data_cfg, setup: dict | None = None, seed_cfgs: dict | None = None) -> Path:
    """``seed_cfgs``: {seed: a run config of that seed} when the world varies with the seed."""
    gold = {s: _gold_inputs(c) for s, c in seed_cfgs.items()} if seed_cfgs else _gold_inputs(data_cfg)
    n_test = len((next(iter(gold.values())) if isinstance(gold, dict) else gold)[1])
    baseline = {r.seed: r for r in read if r.variant == BASELINE}
    rows = study_rows(read, baseline)
    with open(out / "study.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["variant", "seed", "round", "agent", "helpful", "harmless", "combined", "pgr"])
        w.writeheader()
        w.writerows(rows)
    summary = summarize_variants(read, variants, seeds, gold, n_boot=n_boot)
    gates = _gates(read)
    pngs = plot_study(out, summary, rows, variants)
    lines = [f"# Study: {len(variants)} variants x {len(seeds)} seed(s)", ""]
    failed = failed_gates(gates)
    if failed:
        lines += [f"> **PREMISE GATES FAILED in some run: {', '.join(failed)}.** The comparison below does not test "
                  "weak-to-strong alignment where a premise fails; see each run's report.md.", ""]
    elif gates:
        lines += [f"Premise gates: all pass in the {len(gates)} run(s) that computed them.", ""]
    else:
        lines += ["Premise gates: no run wrote gates.json.", ""]
    if setup:
        sets = " ".join(f"`{k}={v}`" for k, v in setup["overrides"].items()) or "none"
        lines += [f"- base config: `{setup['config']}`; overrides: {sets}; {setup['jobs']} run(s) at a time"]
    lines += [
        f"- seeds: {', '.join(map(str, seeds))}; {data_cfg.eval.split} prompts: {n_test}"
        + (" per seed; **the world (prompts, pairs, pretrained models) is redrawn with each seed**, so the intervals "
           "include world variance" if seed_cfgs else "; one world for every seed") + f"; wall time {wall / 60:.1f} min",
        f"- steps: **{tally.ran} ran**, {tally.shared} restored from the shared step cache, {tally.up_to_date} already "
        f"up to date, of a naive sum of **{tally.naive}** steps over {len(read)} runs ({tally.seconds_ran / 60:.1f} min in steps that ran)",
        f"- cells: the variant's result agent (student unless noted) at its last round; mean over seeds with a 95% "
        f"percentile bootstrap interval ({n_boot} draws of seeds x prompts, prompts resampled within each task); "
        f"Δ = paired difference in combined against `{BASELINE}` on the same draws",
        "- PGR = (student − weak-label teacher at round 0) / (gold ceiling − weak-label teacher), mean over seeds",
        "",
        "| variant | round | combined | helpful | harmless | PGR | Δ combined vs naive | seeds | what |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['variant']} | {_fmt(s['round'])} | {s['combined'].fmt()} | {s['helpful'].fmt()} | {s['harmless'].fmt()} | "
                     f"{_fmt(s['pgr'])} | {s['diff_vs_baseline'].fmt()} | {s['seeds']} | {s['help']} |")
    lines += ["", "## Student combined gold reward per round (mean over seeds)", ""]
    rounds = sorted({r["round"] for r in rows})
    lines += ["| variant | " + " | ".join(f"round {r}" for r in rounds) + " |", "|---|" + "---|" * len(rounds)]
    for v in variants:
        cells = []
        for rnd in rounds:
            want = VARIANTS[v].agent
            vals = [r["combined"] for r in rows if r["variant"] == v and r["round"] == rnd and r["combined"] is not None
                    and (r["agent"] == want or (want != "student" and want in r["agent"]))]
            cells.append(_fmt(sum(vals) / len(vals)) if vals else "–")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p}]({p})" for p in pngs]
    lines += ["", "Per-run reports (every agent, per task, rates, pair diagnostics): `runs/<variant>/seed-<s>/report.md`. "
              "All numbers: `study.csv`."]
    path = out / "study.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps({"steps": tally.__dict__, "wall_seconds": round(wall, 1), "variants": [
        {**{k: v for k, v in s.items() if not hasattr(v, "fmt")}, **{k: v.__dict__ for k, v in s.items() if hasattr(v, "fmt")}}
        for s in summary]}, indent=1, default=str))
    return path


def failed_gates(gates: dict[str, list[dict]]) -> list[str]:
    """Names of the premise gates that fail across a study's runs (``{run: gates.json rows}``).

    A gate a run could not measure (a T=0 baseline has no round-1 candidates for the filter
    gate) fails only if no run measured it; a measured failure always counts."""
    every = [g for gs in gates.values() for g in gs]
    measured = {g["name"] for g in every if g.get("value") is not None}
    return sorted({g["name"] for g in every
                   if not g.get("pass") and (g.get("value") is not None or g["name"] not in measured)})


def _gates(read: list[RunResult]) -> dict[str, list[dict]]:
    out = {}
    for r in read:
        gates, _ = read_gates(r.out / "gates.json")
        if gates:
            out[f"{r.variant}/seed-{r.seed}"] = gates
    return out
