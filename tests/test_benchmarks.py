"""CI smoke test of benchmarks/: one tiny iteration of every script (no timing assertions)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
LINE = re.compile(r"^(?P<name>[a-z0-9_]+): ratio=(?P<ratio>n/a|[0-9.e+-]+) \(ours .*\)")


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
        ("audit.py", {"audit_5k_seconds"}),
        ("scoring.py", {"scoring_vs_limit", "scoring_tokens_per_s"}),
        ("generation.py", {"generation_tokens_per_s"}),
        ("dpo.py", {"dpo_steps_per_s", "dpo_peak_rss_lora"}),
    ],
)
def test_script_prints_its_figures_and_records_them(script, figures, tmp_path):
    proc = run(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = {m.group("name") for m in map(LINE.match, proc.stdout.splitlines()) if m}
    assert figures <= printed, proc.stdout
    recorded = rows(tmp_path)
    assert figures <= {r["figure"] for r in recorded}
    for r in recorded:
        assert r["mode"] == "smoke" and r["met"] is None
        assert r["machine"]["cores"] >= 1 and "git_sha" in r
        assert r["ours"] > 0 and r["baseline"] > 0 and r["ratio"] > 0
        assert all(len(v) >= 1 for v in r["runs"].values())
    if script == "dpo.py":
        steps = next(r for r in recorded if r["figure"] == "dpo_steps_per_s")
        assert steps["max_loss_diff"] <= 1e-5 and 1 < steps["bound"] < 10


def test_demo_is_skipped_with_a_reason_outside_full_runs(tmp_path):
    proc = run("demo.py", tmp_path)
    assert proc.returncode == 0 and "demo_wall_seconds: skipped (full run only)" in proc.stdout


def test_readme_table_renders_results(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import run_all
    finally:
        sys.path.remove(str(BENCH))
    text = run_all.table([
        {"figure": "scoring_vs_limit", "model": "tiny", "ours": 1e5, "baseline": 1.1e5, "ratio": 0.91, "unit": "tok/s",
         "target": ">= 0.9 (tiny)", "met": True},
        {"figure": "demo_wall_seconds", "skipped": "no demo config"},
    ])
    assert "| `scoring_vs_limit` | tiny | 100,000 tok/s | 110,000 tok/s | 0.91 | >= 0.9 | yes |" in text
    assert "skipped: no demo config" in text
