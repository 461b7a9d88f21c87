"""CI smoke test of benchmarks/: one tiny iteration of every script (no timing assertions)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
NUM = r"[0-9.e+-]+"
LINE = re.compile(rf"^(?P<name>[a-z0-9_]+): ratio=(?P<ratio>n/a|{NUM})"
                  rf"(?: \[min (?P<min>{NUM}) / median (?P<med>{NUM}) / max (?P<max>{NUM}) of (?P<n>\d+) reps?\])? \(ours .*\)")


def run(script, tmp_path, *flags):
    env = dict(os.environ, MACPO_BENCH_RESULTS=str(tmp_path / "results.jsonl"), MACPO_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, str(BENCH / script), "--smoke", *flags], capture_output=True, text=True,
                          env=env, timeout=300)


def rows(tmp_path):
    path = tmp_path / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.parametrize(
    "script, figures",
    [
        ("materialize.py", {"materialize_rows_per_s"}),
        ("audit.py", {"audit_10m_seconds"}),
        ("scoring.py", {"scoring_vs_limit", "scoring_tokens_per_s"}),
        ("generation.py", {"generation_tokens_per_s"}),
        ("dpo.py", {"dpo_steps_per_s", "dpo_peak_rss_lora", "dpo_peak_rss_full"}),
    ],
)
def test_script_prints_its_figures_and_records_them(script, figures, tmp_path):
    proc = run(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {m.group("name"): m for m in map(LINE.match, proc.stdout.splitlines()) if m}
    assert figures <= set(lines), proc.stdout
    for name in figures:  # every ratio line shows the spread of its repetitions
        m = lines[name]
        assert m.group("n") == "1" and float(m.group("min")) == float(m.group("med")) == float(m.group("max")), m.group(0)
    recorded = rows(tmp_path)
    assert figures <= {r["figure"] for r in recorded}
    for r in recorded:
        assert r["mode"] == "smoke" and r["met"] is None
        assert r["machine"]["cores"] >= 1 and "git_sha" in r
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] > 0
        assert all(len(v) >= 1 for v in r["runs"].values())
        lo, med, hi = r["ratio_spread"]
        assert lo <= med <= hi and r["noise"] is None
    if script == "dpo.py":
        steps = next(r for r in recorded if r["figure"] == "dpo_steps_per_s")
        assert steps["max_loss_diff"] <= 1e-5 and 1 < steps["bound"] < 10


def test_demo_is_skipped_with_a_reason_outside_full_runs(tmp_path):
    proc = run("demo.py", tmp_path)
    assert proc.returncode == 0 and "demo_wall_seconds: skipped (full and quick runs only)" in proc.stdout


def test_readme_table_renders_results(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    text = run_all.table([
        {"figure": "scoring_vs_limit", "model": "tiny", "ours": 1e5, "baseline": 1.1e5, "ratio": 0.91, "unit": "tok/s",
         "target": ">= 0.9 (tiny)", "met": True, "ratio_spread": [0.88, 0.91, 0.95]},
        {"figure": "materialize_rows_per_s", "rows": 1_000_000, "ours": 4.4e5, "baseline": 9e5, "ratio": 0.49, "unit": "rows/s",
         "target": ">= 0.5", "met": False, "noise": True, "ratio_spread": [0.45, 0.5, 0.53], "cpu_ratio": 0.34,
         "ours_cores_used": 1.46},
        {"figure": "audit_10m_seconds", "rows": 10_000_000, "ours": 1.5, "baseline": 0.02, "ratio": 75.0, "unit": "s",
         "target": "< 5 s", "met": True, "ratio_spread": [70.0, 75.0, 80.0], "ours_spread": [1.4, 1.5, 1.6]},
        {"figure": "demo_wall_seconds", "ours": 157.0, "baseline": None, "ratio": None, "unit": "s", "target": "<= 600 s", "met": True},
        {"figure": "demo_wall_seconds", "skipped": "no demo config"},
    ])
    assert "| `scoring_vs_limit` | tiny | 100,000 tok/s | 110,000 tok/s | 0.91 (0.88 / 0.91 / 0.95) | >= 0.9 | yes |" in text
    assert "| 0.49 (0.45 / 0.5 / 0.53) (CPU time 0.34; ours on 1.46 cores) | >= 0.5 | **no** (within the spread: noise) |" in text
    assert "| 1.5 s (1.4 s / 1.5 s / 1.6 s) | 0.02 s | 75 (70 / 75 / 80) |" in text
    assert "| `demo_wall_seconds` |  | 157 s (1 run) | — | — | <= 600 s | yes |" in text
    assert "skipped: no demo config" in text


@pytest.mark.parametrize("reps, noise", [([0.44, 0.47, 0.52], True), ([0.40, 0.42, 0.44], False)])
def test_a_miss_within_the_spread_is_called_noise(reps, noise, tmp_path):
    """The median misses >= 0.5 in both cases; only when a repetition meets it is the miss noise."""
    code = (
        "import argparse, common\n"
        "args = argparse.Namespace(smoke=False, quick=True, reps=3)\n"
        f"common.report('x_per_s', ratio=0.47, ours=47.0, baseline=100.0, unit='rows/s', args=args, target='>= 0.5', "
        f"met=False, rep_ratios={reps!r}, meets=lambda r: r >= 0.5)\n"
    )
    env = dict(os.environ, MACPO_BENCH_RESULTS=str(tmp_path / "results.jsonl"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith(f"x_per_s: ratio=0.47 [min {reps[0]:.3g} / median {reps[1]:.3g} / max {reps[2]:.3g} of 3 reps]"), line
    assert ("MISSED within the spread (noise" in line) is noise and "MISSED" in line, line
    (row,) = rows(tmp_path)
    assert row["noise"] is noise and row["ratio_spread"] == [min(reps), sorted(reps)[1], max(reps)]


def test_run_all_fails_when_a_script_does_not_print_its_figures(tmp_path, monkeypatch):
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    # The demo script prints only a skip line under --smoke; pretend it owes one more figure.
    monkeypatch.setitem(run_all.FIGURES, "demo", ["demo_wall_seconds", "demo_other_figure"])
    monkeypatch.setenv("MACPO_BENCH_RESULTS", str(tmp_path / "results.jsonl"))
    assert run_all.main(["--smoke", "--only", "demo", "--no-readme"]) == 1
    monkeypatch.setitem(run_all.FIGURES, "demo", ["demo_wall_seconds"])
    assert run_all.main(["--smoke", "--only", "demo", "--no-readme"]) == 0
