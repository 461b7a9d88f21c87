"""The run report: premise gates first, then every (round, agent) with its gold metrics per task and
behaviour rates, PGR per round, pair diagnostics per round, metrics.csv / metrics.json and PNG plots.

Gold metrics come from the sandbox world's ``aggregate`` (whatever keys it returns: scalars become
columns, ``per_task`` a per-task table); real-data runs report their reward-model axes instead.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Template

from macpo.eval import diagnostics as dg
from macpo.eval import judge_llm
from macpo.eval.judges import win_rate
from macpo.eval.paper import deviations
from macpo.eval.plots import agent_order, plot_run
from macpo.eval.stats import pgr, pgr_note
from macpo.layout import RunLayout
from macpo.methods import round0_start
from macpo.store import Store

if TYPE_CHECKING:  # the run layer's type: the report is handed a resolved config, never loads one
    from macpo.config import RunConfig

HEADLINE = ("helpful", "harmless", "combined")
# Scalars of the world's aggregate that are not behaviour rates.
_NOT_RATES = {*HEADLINE, "reward", "n", "pgr_note"}
# Where the sandbox's gold reward may live, newest layout first (the data manifest names it).
_GOLD_MODULES = ("macpo.eval.sandbox", "macpo.eval.sandbox.reward", "macpo.eval.world")


def _template() -> Template:
    return Template((resources.files("macpo.eval") / "templates" / "report.md.j2").read_text(), trim_blocks=True, lstrip_blocks=True)


def _fmt(x) -> str:
    if isinstance(x, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in x.items())
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


# ---- the gold reward ------------------------------------------------------------------------------
def gold_module(store, data_dataset: str):
    """The sandbox module with ``gold_reward`` and ``aggregate`` that wrote the run's data.

    The data manifest records ``extra.sandbox.gold_reward`` as ``module.function``; only modules
    inside ``macpo.eval`` are imported (a manifest is a file anyone can edit).
    """
    name, version = store.resolve(data_dataset)
    declared = ((store.manifest(name, version).get("extra") or {}).get("sandbox") or {}).get("gold_reward")
    candidates = list(_GOLD_MODULES)
    if isinstance(declared, str) and declared.startswith("macpo.eval.") and "." in declared:
        candidates.insert(0, declared.rsplit(".", 1)[0])
    for mod in candidates:
        try:
            module = importlib.import_module(mod)
        except ImportError:
            continue
        if callable(getattr(module, "gold_reward", None)) and callable(getattr(module, "aggregate", None)):
            return module
    raise RuntimeError(f"no sandbox gold reward module found among {candidates}")


def response_gold(module, meta, text: str) -> float:
    """One response's scalar gold reward."""
    res = module.gold_reward(meta, text)
    if isinstance(res, dict):
        value = res.get("reward", res.get("combined"))
    else:
        value = res
    return float(value)


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _split_aggregate(agg: dict) -> tuple[dict, dict, dict]:
    """(scalar metrics, per-task reward, per-task metric columns) from the world's aggregate.

    ``per_task`` maps task -> number (or -> {metric: number}); ``tasks`` (if any) task -> {metric:
    number}; the latter become ``task:<task>:<metric>`` columns of metrics.csv.
    """
    scalars = {k: v for k, v in agg.items() if _number(v)}
    per_task = agg.get("per_task") or {}
    nested = {t: v for t, v in (agg.get("tasks") or {}).items() if isinstance(v, dict)}
    if per_task and all(isinstance(v, dict) for v in per_task.values()):
        nested = {**per_task, **nested}
        per_task = {t: v.get("reward", v.get("combined")) for t, v in per_task.items()}
    columns = {f"task:{t}:{k}": v for t, m in nested.items() for k, v in m.items() if k != "n" and _number(v)}
    return scalars, {t: v for t, v in per_task.items() if _number(v)}, columns


# ---- collecting -------------------------------------------------------------------------------------
def collect(cfg: RunConfig) -> tuple[list[dict], list[str], bool]:
    """One metrics row per (round, agent); the axes to show; whether the scores are gold."""
    rows, axes, gold, _ = _collect(cfg)
    return rows, axes, gold


def _collect(cfg: RunConfig):
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    gold = bool(cfg.world)
    metas, module = {}, None
    if gold:
        module = gold_module(store, layout.data_dataset)
        name, version = store.resolve(layout.data_dataset)
        test = store.read(name, version, cfg.eval.split)
        metas = dict(zip(test.column("prompt_id").to_pylist(), test.column("meta").to_pylist()))
    rows, per_prompt, tasks = [], {}, {}
    for version in store.versions(layout.evals_dataset):
        table = store.read(layout.evals_dataset, version, "default").to_pylist()
        by_agent: dict[str, list[dict]] = {}
        for r in table:
            by_agent.setdefault(r["agent"], []).append(r)
        for agent, items in by_agent.items():
            round_ = items[0]["round"]
            row = {"round": round_, "agent": agent, "method": items[0]["method"], "n": len(items)}
            if gold:
                agg = module.aggregate([metas[i["prompt_id"]] for i in items], [i["response"][0]["content"] for i in items])
                scalars, per_task, task_columns = _split_aggregate(agg)
                row.update({k: v for k, v in scalars.items() if k != "n"})
                row.update(task_columns)
                row["reward"] = agg.get("combined")
                tasks[(round_, agent)] = per_task
            axes_rm = sorted({s["axis"] for i in items for s in i["scores"] if s["scorer"] != "gold"})
            for axis in axes_rm:
                vals = [s["value"] for i in items for s in i["scores"] if s["axis"] == axis and s["scorer"] != "gold"]
                row[axis] = sum(vals) / len(vals)
            if not gold and axes_rm:
                row["reward"] = sum(row[a] for a in axes_rm) / len(axes_rm)
            per_prompt[(round_, agent)] = {i["prompt_id"]: _prompt_reward(i, gold) for i in items}
            rows.append(row)
    base = per_prompt.get((0, "student"), {})
    for row in rows:
        mine = per_prompt[(row["round"], row["agent"])]
        common = [p for p in mine if p in base]
        row["win_rate_vs_round0"] = win_rate([mine[p] for p in common], [base[p] for p in common]) if row["agent"] == "student" else None
    gates, _ = read_gates(RunLayout(cfg).out / "gates.json")
    pgr_why = add_pgr(rows, weak_agent=f"teacher-{cfg.weak_label_teacher}", premise_failed=any(not g["pass"] for g in gates))
    for row in rows:
        row["pgr_note"] = pgr_why if row["agent"] == "student" else None
    rows.sort(key=lambda r: (r["round"], agent_order(r["agent"])))
    if gold:
        axes = list(HEADLINE)
    else:
        axes = sorted({k for r in rows for k in r} - {"round", "agent", "method", "n", "win_rate_vs_round0", "reward", "pgr"}) + ["reward"]
    return rows, axes, gold, tasks


def ceiling_agent(rows: list[dict]) -> str | None:
    """The gold-ceiling agent (the student trained on gold labels), if the run evaluated one."""
    names = sorted({r["agent"] for r in rows if "ceiling" in r["agent"]})
    return names[0] if names else None


def add_pgr(rows: list[dict], *, weak_agent: str, key: str = "reward", premise_failed: bool = False) -> str | None:
    """Set ``pgr`` on the student's rows: (student - weak-label teacher at round 0) / (ceiling - that teacher).

    The teacher's round-0 score is the weak supervision's quality (the labels came from it);
    the ceiling is the gold-trained agent's round-0 score. No ceiling, a gap under
    :data:`PGR_MIN_GAP` or a failed premise gate: pgr stays None, and the reason is returned.
    """
    pick = lambda agent: next((r.get(key) for r in rows if r["round"] == 0 and r["agent"] == agent), None)  # noqa: E731
    ceiling = ceiling_agent(rows)
    weak, top = pick(weak_agent), pick(ceiling) if ceiling else None
    note = "a premise gate failed" if premise_failed else pgr_note(weak, top)
    for row in rows:
        row["pgr"] = pgr(row.get(key), weak, top) if row["agent"] == "student" and not premise_failed else None
    return note


def _prompt_reward(item: dict, gold: bool) -> float:
    scores = [s["value"] for s in item["scores"] if (s["scorer"] == "gold") == gold and (s["axis"] == "reward" or not gold)]
    return sum(scores) / len(scores) if scores else 0.0


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {"student_round0": None}
    final = max(r["round"] for r in rows)
    get = lambda rnd, agent, key="reward": next((r.get(key) for r in rows if r["round"] == rnd and r["agent"] == agent), None)  # noqa: E731
    teachers = lambda rnd: [r.get("reward") for r in rows if r["round"] == rnd and r["agent"].startswith("teacher") and r.get("reward") is not None]  # noqa: E731
    ceiling = ceiling_agent(rows)
    return {
        "student_round0": get(0, "student"),
        "student_final": get(final, "student"),
        "final_round": final,
        "best_teacher_round0": max(teachers(0), default=None),
        "best_teacher": max(teachers(final), default=None),
        "ceiling": get(0, ceiling) if ceiling else None,
        "pgr_round0": get(0, "student", "pgr"),
        "pgr_final": get(final, "student", "pgr"),
        "pgr_note": get(0, "student", "pgr_note"),
    }


# ---- premise gates ------------------------------------------------------------------------------------
def read_gates(path: Path) -> tuple[list[dict], str | None]:
    """``gates.json`` entries (name, value, threshold, pass, detail), or an error line if unreadable.

    The file is written by the run's gate step; a malformed entry is reported, not trusted.
    """
    if not path.is_file():
        return [], None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [], f"{path.name} is unreadable: {exc}"
    items = data.get("gates") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return [], f"{path.name} has no 'gates' list"
    gates = []
    for i, g in enumerate(items):
        if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not isinstance(g.get("pass"), bool):
            return [], f"{path.name}: entry {i} lacks a name or a true/false pass"
        def num(v):  # a number, or a mapping of named numbers (gates with several conditions)
            if isinstance(v, dict):
                return {str(k): num(x) for k, x in v.items()}
            return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        gates.append({"name": g["name"], "value": num(g.get("value")), "threshold": num(g.get("threshold")),
                      "pass": g["pass"], "detail": str(g.get("detail") or "")})
    return gates, None


def premise_diagnostics(path: Path) -> dict:
    """The diagnostics written beside the gates (implicit reward, D_w pair quality), or {}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    diag = data.get("diagnostics") if isinstance(data, dict) else None
    return diag if isinstance(diag, dict) else {}


# ---- pair diagnostics ---------------------------------------------------------------------------------
def round_diagnostics(cfg: RunConfig) -> list[dict]:
    """Per round >= 1 and learner: gold of chosen vs rejected, filter picks/accuracy, ppl-gold
    Spearman, DPO reward accuracy and margin. Sandbox runs only (needs the gold reward)."""
    if not cfg.world:
        return []
    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    if layout.rounds_dataset not in store.datasets():
        return []
    module = gold_module(store, layout.data_dataset)
    name, version = store.resolve(layout.data_dataset)
    metas = {}
    for subset in ("q", "dw_prompts", "test"):
        if subset in store.subsets(name, version):
            t = store.read(name, version, subset)
            metas.update(zip(t.column("prompt_id").to_pylist(), t.column("meta").to_pylist()))
    score = lambda meta, text: response_gold(module, meta, text)  # noqa: E731
    out = []
    for v in store.versions(layout.rounds_dataset):
        if not v.startswith("round-") or not v[6:].isdigit() or int(v[6:]) < 1:
            continue
        round_ = int(v[6:])
        subsets = store.subsets(layout.rounds_dataset, v)
        cands = None
        if "candidates" in subsets:
            cands = dg.attach_gold(store.read(layout.rounds_dataset, v, "candidates"), "response", metas, score, "gold")
        for learner in sorted((s for s in subsets if s != "candidates"), key=agent_order):
            pairs = dg.as_pairs(store.read(layout.rounds_dataset, v, learner))
            if "chosen" not in pairs.column_names:
                continue
            pairs = dg.attach_gold(pairs, "chosen", metas, score, "chosen_gold")
            if "rejected" in pairs.column_names:
                pairs = dg.attach_gold(pairs, "rejected", metas, score, "rejected_gold")
            d = {"round": round_, "learner": learner, **dg.pair_gold(pairs), "picks": dg.filter_picks(pairs)}
            if learner == "student" and cands is not None:
                d.update(dg.filter_accuracy(cands, pairs))
                d["ppl_gold_spearman"] = dg.ppl_gold_spearman(cands, "student")["spearman"]
            mpath = layout.model_dir(learner, round_) / "metrics.json"
            metrics = json.loads(mpath.read_text()) if mpath.is_file() else None
            d.update({f"dpo_{k}": val for k, val in dg.dpo_rewards(metrics).items()})
            out.append(d)
    return out


# ---- writing ------------------------------------------------------------------------------------------------
def _config_line(cfg: RunConfig) -> str:
    fields = ("mutual_positive", "negative", "hard_negative", "update_teachers", "chosen_rule")
    return ", ".join(f"{f}={getattr(cfg, f)}" for f in fields if hasattr(cfg, f))


def _sft_budget(cfg: RunConfig) -> str:
    sft = cfg.train["student_sft"]
    budget = f"{sft.max_steps} steps" if sft.max_steps > 0 else f"{sft.epochs:g} epochs"
    return budget + f" at lr {sft.lr:g}, batch {sft.batch_size} (config `train.student_sft`)"


def write_report(cfg: RunConfig) -> Path:
    layout = RunLayout(cfg)
    out = layout.out
    rows, axes, gold, tasks = _collect(cfg)
    # Asked before anything is written: a judge that fails leaves the previous report whole.
    judge_cols, judge_md = judge_rows(cfg, rows)
    gates, gates_error = read_gates(out / "gates.json")
    diagnostics = round_diagnostics(cfg)
    rates = sorted({k for r in rows for k, v in r.items() if k not in _NOT_RATES and _number(v) and not k.startswith(("task:", "judge:"))}
                   - {"round", "n", "win_rate_vs_round0", "pgr", *axes}) if gold else []
    task_metrics = sorted({k for r in rows for k in r if k.startswith("task:")})
    task_names = sorted({t for per in tasks.values() for t in per})
    for row in rows:
        row.update({f"task:{t}": v for t, v in tasks.get((row["round"], row["agent"]), {}).items()})
    with open(out / "metrics.csv", "w", newline="") as fh:
        cols = ["round", "agent", "method", *axes, *rates, "pgr", "pgr_note", *[f"task:{t}" for t in task_names], *task_metrics, "win_rate_vs_round0", "n",
                "gate_value", "gate_threshold", "gate_pass", *judge_cols]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        # The premise gates are round-0 facts of the run: one row each, agent "gate:<name>".
        cell = lambda v: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v  # noqa: E731
        w.writerows({"round": 0, "agent": f"gate:{g['name']}", "gate_value": cell(g["value"]), "gate_threshold": cell(g["threshold"]),
                     "gate_pass": g["pass"]} for g in gates)
    summary = summarize(rows)
    summary["gates_failed"] = [g["name"] for g in gates if not g["pass"]]
    (out / "metrics.json").write_text(json.dumps({**summary, "rows": rows, "gates": gates, "diagnostics": diagnostics},
                                                 indent=1, default=str))
    pngs = [p.name for p in plot_run(rows, axes, out, diagnostics)]
    store = Store(layout.store_dir)
    rounds = [(v, store.manifest(layout.rounds_dataset, v)["content_hash"]) for v in store.versions(layout.rounds_dataset)] \
        if layout.rounds_dataset in store.datasets() else []
    text = _template().render(
        cfg=cfg, rows=rows, axes=axes, rates=rates, tasks=task_names, gold=gold, summary=summary, fmt=_fmt,
        rounds=rounds, store=layout.store_dir, sft_budget=_sft_budget(cfg), ablations=_config_line(cfg),
        gates=gates, gates_error=gates_error, failed=summary["gates_failed"], diagnostics=diagnostics,
        ceiling=ceiling_agent(rows), weak=f"teacher-{cfg.weak_label_teacher}", pngs=pngs, picks=_picks_table(diagnostics),
        deviations=_deviations(cfg), round0_start=round0_start(cfg.method), judge=judge_md,
        premise=premise_diagnostics(out / "gates.json"),
    )
    (out / "report.md").write_text(text)
    return out / "report.md"


def judge_rows(cfg: RunConfig, rows: list[dict]) -> tuple[list[str], str]:
    """With ``eval.judge``: judge the run (eval/judge_llm.py), put ``judge:<opponent>:<stat>`` on the
    student's rows, and return those column names and the report's judge section."""
    if cfg.eval.judge is None:
        return [], ""
    judged = judge_llm.run_judge(cfg)
    extra = judge_llm.columns(judged)
    for row in rows:
        row.update(extra.get((row["round"], row["agent"]), {}))
    return judge_llm.column_names(judged), judge_llm.markdown(cfg, judged)


def _deviations(cfg: RunConfig) -> list[dict]:
    """Settings where the run departs from the MACPO paper, with the measured reason (eval/paper.py)."""
    return deviations(cfg.to_dict())


def _picks_table(diagnostics: list[dict]) -> tuple[list[str], list[dict[str, Any]]]:
    """(teachers, rows) of how often the student's filter picked each teacher, per round."""
    student = [d for d in diagnostics if d["learner"] == "student"]
    agents = sorted({a for d in student for a in d["picks"]})
    return agents, [{"round": d["round"], **{a: d["picks"].get(a, 0) for a in agents}, "n": d["n"]} for d in student]
