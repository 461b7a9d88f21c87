"""The run report's PNG plots (reward and PGR per round, helpful vs harmless, the student's pairs),
and the pyplot setup the study's plots share."""

from __future__ import annotations

from pathlib import Path


def agent_order(agent: str):
    """Agents as tables and plots list them: the student first, gold ceilings last."""
    return (agent != "student", "ceiling" in agent, agent)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib  # lazy: ~0.5 s to import; only writing a report or a study's plots needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(rows: list[dict], axes: list[str], out: Path, diagnostics: list[dict] | None = None) -> list[Path]:
    """The report's PNGs in ``out``, from its rows (and the student's pair diagnostics)."""
    plt = pyplot()
    paths = []
    agents = sorted({r["agent"] for r in rows}, key=agent_order)
    rounds = sorted({r["round"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    for agent in agents:
        pts = sorted((r["round"], r.get("reward")) for r in rows if r["agent"] == agent and r.get("reward") is not None)
        if not pts:
            continue
        if len(pts) == 1 and "ceiling" in agent:
            ax.axhline(pts[0][1], ls="--", color="grey", lw=1, label=f"{agent} (round 0)")
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2.5 if agent == "student" else 1.2, label=agent)
    ax.set_xlabel("round")
    ax.set_ylabel("reward" + (" (gold, combined)" if "combined" in axes else ""))
    ax.set_title("Reward per round")
    ax.set_xticks(rounds)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(save(plt, fig, out / "reward_by_round.png"))

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
    paths.append(save(plt, fig, out / "helpful_vs_harmless.png"))

    pgr_pts = sorted((r["round"], r["pgr"]) for r in rows if r["agent"] == "student" and r.get("pgr") is not None)
    if pgr_pts:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([p[0] for p in pgr_pts], [p[1] for p in pgr_pts], marker="o", lw=2)
        ax.axhline(0, color="grey", lw=1)
        ax.axhline(1, color="grey", lw=1, ls="--")
        ax.set_xlabel("round")
        ax.set_ylabel("PGR")
        ax.set_title("Performance gap recovered (0 = weak teacher, 1 = gold ceiling)")
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
        paths.append(save(plt, fig, out / "pgr_by_round.png"))

    student = [d for d in diagnostics or [] if d["learner"] == "student"]
    if student:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
        xs = [d["round"] for d in student]
        for key, label in (("chosen_gold", "chosen"), ("rejected_gold", "rejected")):
            a1.plot(xs, [d.get(key) if d.get(key) is not None else float("nan") for d in student], marker="o", label=label)
        a1.set_title("student pairs: mean gold")
        for key, label in (("filter_gold", "familiarity filter"), ("random_gold", "random teacher"), ("oracle_gold", "oracle")):
            a2.plot(xs, [d.get(key) if d.get(key) is not None else float("nan") for d in student], marker="o", label=label)
        a2.set_title("gold of the picked teacher candidate")
        for a in (a1, a2):
            a.set_xlabel("round")
            a.set_xticks(xs)
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        paths.append(save(plt, fig, out / "pairs_by_round.png"))
    return paths
