"""The run report: a round x agent table, metrics.csv, win rates and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from jinja2 import Template

from macpo.config import RunConfig
from macpo.eval.judges import win_rate
from macpo.layout import RunLayout

def _template() -> Template:
    from importlib import resources

    return Template((resources.files("macpo.eval") / "templates" / "report.md.j2").read_text())


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def collect(cfg: RunConfig) -> tuple[list[dict], list[str], bool]:
    """One metrics row per (round, agent)."""
    from macpo.store import Store

    layout = RunLayout(cfg)
    store = Store(layout.store_dir)
    gold = bool(cfg.world)
    metas = {}
    if gold:
        from macpo.eval import world

        name, version = store.resolve(layout.data_dataset)
        test = store.read(name, version, "test")
        metas = dict(zip(test.column("prompt_id").to_pylist(), test.column("meta").to_pylist()))
    rows, per_prompt = [], {}
    for version in store.versions(layout.evals_dataset):
        table = store.read(layout.evals_dataset, version, "default").to_pylist()
        by_agent: dict[str, list[dict]] = {}
        for r in table:
            by_agent.setdefault(r["agent"], []).append(r)
        for agent, items in by_agent.items():
            round_ = items[0]["round"]
            row = {"round": round_, "agent": agent, "method": items[0]["method"], "n": len(items)}
            if gold:
                agg = world.aggregate([metas[i["prompt_id"]] for i in items], [i["response"][0]["content"] for i in items])
                row.update({k: agg[k] for k in ("helpful", "harmless", "combined")})
                row["reward"] = agg["combined"]
            axes = sorted({s["axis"] for i in items for s in i["scores"] if s["scorer"] != "gold"})
            for axis in axes:
                vals = [s["value"] for i in items for s in i["scores"] if s["axis"] == axis and s["scorer"] != "gold"]
                row[axis] = sum(vals) / len(vals)
            if not gold and axes:
                row["reward"] = sum(row[a] for a in axes) / len(axes)
            per_prompt[(round_, agent)] = {i["prompt_id"]: _prompt_reward(i, gold) for i in items}
            rows.append(row)
    base = per_prompt.get((0, "student"), {})
    for row in rows:
        mine = per_prompt[(row["round"], row["agent"])]
        common = [p for p in mine if p in base]
        row["win_rate_vs_round0"] = win_rate([mine[p] for p in common], [base[p] for p in common]) if row["agent"] == "student" else None
    rows.sort(key=lambda r: (r["round"], r["agent"] != "student", r["agent"]))
    axes = ["helpful", "harmless", "combined"] if gold else sorted({k for r in rows for k in r} - {"round", "agent", "method", "n", "win_rate_vs_round0", "reward"}) + ["reward"]
    return rows, axes, gold


def _prompt_reward(item: dict, gold: bool) -> float:
    scores = [s["value"] for s in item["scores"] if (s["scorer"] == "gold") == gold and (s["axis"] == "reward" or not gold)]
    return sum(scores) / len(scores) if scores else 0.0


def summarize(rows: list[dict]) -> dict:
    if not rows:
        return {"student_round0": None}
    final = max(r["round"] for r in rows)
    get = lambda rnd, agent: next((r.get("reward") for r in rows if r["round"] == rnd and r["agent"] == agent), None)  # noqa: E731
    teachers = lambda rnd: [r.get("reward") for r in rows if r["round"] == rnd and r["agent"].startswith("teacher") and r.get("reward") is not None]  # noqa: E731
    return {
        "student_round0": get(0, "student"),
        "student_final": get(final, "student"),
        "final_round": final,
        "best_teacher_round0": max(teachers(0), default=None),
        "best_teacher": max(teachers(final), default=None),
    }


def plot(rows: list[dict], axes: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    agents = sorted({r["agent"] for r in rows}, key=lambda a: (a != "student", a))
    fig, ax = plt.subplots(figsize=(6, 4))
    for agent in agents:
        pts = sorted((r["round"], r.get("reward")) for r in rows if r["agent"] == agent and r.get("reward") is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2.5 if agent == "student" else 1.2, label=agent)
    ax.set_xlabel("round")
    ax.set_ylabel("reward" + (" (gold, combined)" if "combined" in axes else ""))
    ax.set_title("Reward per round")
    ax.set_xticks(sorted({r["round"] for r in rows}))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "reward_by_round.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    x_axis, y_axis = ("helpful", "harmless") if "helpful" in axes and "harmless" in axes else (axes[0], axes[-1])
    fig, ax = plt.subplots(figsize=(5, 5))
    for agent in agents:
        pts = sorted((r["round"], r.get(x_axis), r.get(y_axis)) for r in rows if r["agent"] == agent)
        pts = [p for p in pts if p[1] is not None and p[2] is not None]
        if not pts:
            continue
        line = ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=agent, lw=2 if agent == "student" else 1)[0]
        for rnd, x, y in pts:
            ax.annotate(str(rnd), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=line.get_color())
    ax.set_xlabel(x_axis)
    ax.set_ylabel(y_axis)
    ax.set_title(f"{x_axis} vs {y_axis} (labels: round)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "helpful_vs_harmless.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(cfg: RunConfig) -> Path:
    from macpo.store import Store

    layout = RunLayout(cfg)
    out = layout.out
    rows, axes, gold = collect(cfg)
    with open(out / "metrics.csv", "w", newline="") as fh:
        cols = ["round", "agent", "method", *axes, "win_rate_vs_round0", "n"]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    summary = summarize(rows)
    (out / "metrics.json").write_text(json.dumps({**summary, "rows": rows}, indent=1, default=str))
    plot(rows, axes, out)
    store = Store(layout.store_dir)
    rounds = [(v, store.manifest(layout.rounds_dataset, v)["content_hash"]) for v in store.versions(layout.rounds_dataset)]
    sft = cfg.train["student_sft"]
    budget = f"{sft.max_steps} steps" if sft.max_steps > 0 else f"{sft.epochs:g} epochs"
    budget += f" at lr {sft.lr:g}, batch {sft.batch_size} (config `train.student_sft`)"
    text = _template().render(cfg=cfg, rows=rows, axes=axes, gold=gold, summary=summary, fmt=_fmt, rounds=rounds,
                         store=layout.store_dir, sft_budget=budget)
    (out / "report.md").write_text(text)
    return out / "report.md"
