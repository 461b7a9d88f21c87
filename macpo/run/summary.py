"""What ``macpo run`` and ``macpo demo`` print at the end: a run's headline numbers and premise
gates, and the demo's two axes side by side."""

from __future__ import annotations

import json
from pathlib import Path

from macpo.config import RunConfig
from macpo.methods import round0_start
from macpo.eval.sandbox.gates import render as render_gates


def summarize(cfg: RunConfig) -> str:
    """What a user must see whatever it is: the premise gates (sandbox), every agent's round-0
    and final scores, and the headline numbers, from gates.json and the report's metrics.json."""
    path = Path(cfg.out) / "metrics.json"
    if not path.is_file():
        return ""
    m = json.loads(path.read_text())
    lines = [f"report: {Path(cfg.out) / 'report.md'}"]
    gates_path = Path(cfg.out) / "gates.json"
    if gates_path.is_file():
        try:
            lines.append(render_gates(json.loads(gates_path.read_text())["gates"]))
        except (ValueError, KeyError, TypeError):
            lines.append(f"premise gates: {gates_path} is unreadable")
    rows = [r for r in m.get("rows") or [] if isinstance(r, dict) and not str(r.get("agent", "")).startswith("gate:")]
    final = max((r.get("round", 0) for r in rows), default=0)
    cols = [c for c in ("combined", "helpful", "harmless", "protocol_rate", "content_accuracy", "refusal_rate",
                        "over_refusal_rate", "reward") if any(r.get(c) is not None for r in rows)]
    if rows and cols:
        lines.append(f"  {'round':>5}  {'agent':<20}" + "".join(f"{c.replace('_rate', '').replace('_accuracy', ''):>13}" for c in cols))
        for r in sorted((r for r in rows if r.get("round") in (0, final)), key=lambda r: (r.get("round"), r.get("agent"))):
            cells = "".join(f"{r[c]:>13.3f}" if isinstance(r.get(c), (int, float)) else f"{'-':>13}" for c in cols)
            lines.append(f"  {r.get('round'):>5}  {str(r.get('agent')):<20}{cells}")
    # The sandbox scores with its gold reward (a `combined` axis); real runs with reward models.
    what = "gold reward" if any(r.get("combined") is not None for r in rows) else "reward (mean of the reward-model axes)"
    for key, label in (("student_round0", f"student {what}, round 0 ({round0_start(cfg.method)})"),
                       ("student_final", f"student {what}, after round {cfg.T}"),
                       ("best_teacher", f"best teacher {what}")):
        if key in m and m[key] is not None:
            lines.append(f"  {label}: {m[key]:.3f}")
    return "\n".join(lines)


def side_by_side(runs: list[tuple[str, RunConfig]]) -> str:
    """The axes' headline numbers and gates in one table (from each run's metrics.json / gates.json)."""
    keys = [("student_round0", "student, round 0 (naive weak-to-strong)"), ("student_final", "student, final round"),
            ("best_teacher_round0", "best teacher, round 0"), ("best_teacher", "best teacher, final round"),
            ("ceiling", "gold ceiling"), ("pgr_round0", "PGR, round 0"), ("pgr_final", "PGR, final round")]
    data = {}
    for axis, cfg in runs:
        try:
            data[axis] = json.loads((Path(cfg.out) / "metrics.json").read_text())
        except (OSError, ValueError):
            data[axis] = {}
    axes = [a for a, _ in runs]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"  # noqa: E731
    split = runs[0][1].eval.split if runs else "test"
    lines = [f"# macpo demo: both axes (each axis's headline gold reward on its {split} split: helpfulness on "
             "the helpful axis, harmlessness on the harmless axis)", "",
             "| | " + " | ".join(axes) + " |", "|---|" + "---|" * len(axes)]
    for key, label in keys:
        lines.append(f"| {label} | " + " | ".join(fmt(data[a].get(key)) for a in axes) + " |")
    failed = {a: data[a].get("gates_failed") for a in axes}
    lines.append("| premise gates | " + " | ".join(
        "–" if failed[a] is None else ("all pass" if not failed[a] else "FAILED: " + ", ".join(failed[a])) for a in axes) + " |")
    lines += ["", "Reports: " + ", ".join(f"`{Path(cfg.out) / 'report.md'}`" for _, cfg in runs), ""]
    return "\n".join(lines)
