"""The study's PNG plots: the variants' combined scores with intervals, the student per round,
and every agent per round for each MACPO variant."""

from __future__ import annotations

from pathlib import Path

from macpo.eval.plots import pyplot as _plt
from macpo.eval.plots import save as _save
from macpo.run.study.variants import BASELINE


def plot_study(out: Path, summary: list[dict], rows: list[dict], variants: list[str]) -> list[str]:
    plt = _plt()
    names = []
    shown = [s for s in summary if s["combined"].mean is not None]
    if shown:
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(shown) + 1.5))
        ys = list(range(len(shown)))[::-1]
        for y, s in zip(ys, shown):
            c = s["combined"]
            if c.low is not None:
                ax.plot([c.low, c.high], [y, y], color="C0", lw=2)
            ax.plot([c.mean], [y], "o", color="C3" if s["variant"] == BASELINE else "C0")
        ax.set_yticks(ys)
        ax.set_yticklabels([s["variant"] for s in shown])
        ax.set_xlabel("gold reward, the axis's headline (mean over seeds, 95% bootstrap interval)")
        ax.grid(alpha=0.3, axis="x")
        names.append(_save(plt, fig, out / "study_combined.png").name)
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    rounds = set()
    for v in variants:
        pts = {}
        for r in rows:
            if r["variant"] == v and r["agent"] == "student" and r["combined"] is not None:
                pts.setdefault(r["round"], []).append(r["combined"])
        if len(pts) > 1:
            xs = sorted(pts)
            rounds.update(xs)
            ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], label=v, lw=2.5 if v == "macpo" else 1.2,
                    **_style(len(ax.lines)))
    if ax.lines:
        base = [r["combined"] for r in rows if r["variant"] == BASELINE and r["agent"] == "student" and r["combined"] is not None]
        if base:
            ax.axhline(sum(base) / len(base), color="grey", ls="--", lw=1, label=BASELINE)
        ax.set_xticks(sorted(rounds))
        ax.set_xlabel("round")
        ax.set_ylabel("student gold reward, the axis's headline (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: 20 lines hide under it
        names.append(_save(plt, fig, out / "study_rounds.png").name)
    else:
        plt.close(fig)
    # Every agent per round, one panel per MACPO variant (as the paper's Fig. 2-4 show the student
    # and each teacher over iterations): do the teachers improve with the student?
    panels = [v for v in variants if len({r["round"] for r in rows if r["variant"] == v}) > 1
              and any(r["agent"].startswith("teacher") and r["round"] > 0 for r in rows if r["variant"] == v)]
    if panels:
        cols = min(3, len(panels))
        fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.4 * ((len(panels) + cols - 1) // cols)),
                                 squeeze=False, sharey=True)
        for ax, v in zip(axes.flat, panels):
            agents = sorted({r["agent"] for r in rows if r["variant"] == v and (r["agent"] == "student" or r["agent"].startswith("teacher"))
                             and not r["agent"].endswith("-neg")}, key=lambda a: (a != "student", a))
            for a in agents:
                pts: dict[int, list[float]] = {}
                for r in rows:
                    if r["variant"] == v and r["agent"] == a and r["combined"] is not None:
                        pts.setdefault(r["round"], []).append(r["combined"])
                xs = sorted(pts)
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", lw=2.5 if a == "student" else 1.2, label=a)
            ax.set_title(v, fontsize=9)
            ax.set_xticks(sorted({r["round"] for r in rows if r["variant"] == v}))
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.supylabel("gold reward, the axis's headline (mean over seeds)")  # one panel's label was cut off
        axes[0][0].legend(fontsize=7)
        names.append(_save(plt, fig, out / "study_agents.png").name)
    return names


def _style(i: int) -> dict:
    """The i-th line's colour, dash and marker: a study plots every variant on one axes, and the
    default cycle repeats its ten colours (two variants drew in the same green)."""
    return {"color": f"C{i % 10}", "ls": ("-", "--", ":")[i // 10 % 3], "marker": "osD"[i // 10 % 3]}
