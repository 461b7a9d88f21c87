"""Shared plumbing of the benchmark scripts: one thread, interleaved repetitions, results rows.

Every figure is a ratio of two timings taken on the same machine in the same process, run
alternately (A B A B …) so that load from other jobs hits both sides alike; the figure is
the ratio of the medians. Each script prints ``name: ratio=… [min … / median … / max … of N
reps] (ours …, baseline …)``, the bracket being the ratios of the single repetitions (ours and
baseline of the same pass), and appends one JSON row to ``benchmarks/results.jsonl`` (``MACPO_BENCH_RESULTS`` overrides the
path; ``--smoke`` writes nowhere unless that variable is set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# One thread for every library, set before torch/numpy/pyarrow/duckdb start their pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results.jsonl"

sys.path.insert(0, str(REPO / "tests"))  # tests/tiny.py: the tiny fixture model


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny models and small sizes only (run_all --quick)")
    p.add_argument("--smoke", action="store_true", help="one tiny iteration, for CI: checks the script runs, times nothing")
    p.add_argument("--reps", type=int, default=None, help="repetitions of each side (default 3; 1 with --smoke)")
    p.add_argument("--model", choices=["tiny", "smollm2"], action="append",
                   help="models for the model figures (default: tiny, plus smollm2 in a full run)")
    return p


def models(args) -> list[str]:
    if args.model:
        return args.model
    return ["tiny"] if args.quick or args.smoke else ["tiny", "smollm2"]


def reps(args) -> int:
    return args.reps or (1 if args.smoke else 3)


def single_thread() -> None:
    """torch, pyarrow (and through the env vars above, OpenMP/MKL) on one thread."""
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def interleave(
    sides: dict[str, Callable[[], Any]], reps: int, warmup: bool = True, clock: str = "wall"
) -> dict[str, list[float]]:
    """Run each side ``reps`` times, alternating; return seconds per run on ``clock``.

    ``clock="wall"`` is elapsed time (what a user waits for, I/O included); ``clock="cpu"``
    is this process's CPU time, which on a shared machine measures the work done rather
    than the scheduler's mood (the compute figures run on one thread, where the two agree
    on an idle machine). The other clock's readings are kept in ``interleave.last_other``.
    A side may return a number, which is then taken as its own measured seconds.
    """
    read = time.process_time if clock == "cpu" else time.perf_counter
    other = time.perf_counter if clock == "cpu" else time.process_time
    if warmup:
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    others: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, fn in sides.items():
            start, start_other = read(), other()
            value = fn()
            elapsed = read() - start
            others[name].append(other() - start_other)
            times[name].append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else elapsed)
    interleave.last_other = others
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired(runs: dict[str, list[float]], fn: Callable[[float, float], float], ours: str = "ours", base: str | None = None) -> list[float]:
    """``fn(ours_i, baseline_i)`` for each repetition i: the figure as one A/B pass measured it.

    ``base`` defaults to the one side that is not ``ours``. Interleaving puts the two runs of a
    pass next to each other in time, so their ratio carries the machine's noise of that moment.
    """
    base = base or next(k for k in runs if k != ours)
    return [fn(a, b) for a, b in zip(runs[ours], runs[base])]


def spread(xs: list[float] | None) -> list[float] | None:
    """``[min, median, max]`` of the repetitions (None when there are none)."""
    return [min(xs), statistics.median(xs), max(xs)] if xs else None


def _fmt_spread(s: list[float], n: int, fmt=lambda v: f"{v:.3g}") -> str:
    return f"[min {fmt(s[0])} / median {fmt(s[1])} / max {fmt(s[2])} of {n} rep{'s' if n != 1 else ''}]"


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "macpo", "builder", "trainer", "benchmarks",
                                ":!benchmarks/results.jsonl", ":!benchmarks/README.md"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict:
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3g} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}"
    return f"{value:.4g} {unit}"


def report(
    name: str,
    *,
    ratio: float | None,
    ours: float | None,
    baseline: float | None,
    unit: str,
    args,
    target: str | None = None,
    met: bool | None = None,
    runs: dict | None = None,
    clock: str = "wall",
    extra: dict | None = None,
    rep_ratios: list[float] | None = None,
    rep_values: list[float] | None = None,
    meets: Callable[[float], bool] | None = None,
    size: str | None = None,
) -> dict:
    """Print the figure's line and append its JSON row (see module docstring).

    ``rep_ratios``: the ratio of each repetition (see ``paired``); ``rep_values``: our own
    value per repetition, for figures whose target is absolute (seconds). ``meets(v)`` says
    whether one repetition's value (a ratio, or with ``rep_values`` an absolute value) meets
    the target: a target missed by the median but met by one repetition is missed *within
    the spread*, and the line calls it noise. ``size``: what was measured when it is smaller
    than the figure's own size (quick runs).
    """
    if args.smoke:
        met = None  # one tiny iteration proves the script runs, not the target
    ratio_s = "n/a" if ratio is None else f"{ratio:.3g}"
    if rep_ratios:
        ratio_s += " " + _fmt_spread(spread(rep_ratios), len(rep_ratios))
    parts = []
    if ours is not None:
        parts.append(f"ours {_fmt(ours, unit)}")
        if rep_values:
            parts[-1] += " " + _fmt_spread(spread(rep_values), len(rep_values), lambda v: _fmt(v, unit))
    if baseline is not None:
        parts.append(f"baseline {_fmt(baseline, unit)}")
    if size:
        parts.append(size)
    noise = None
    if met is False and meets is not None:
        noise = any(meets(v) for v in (rep_values or rep_ratios or []))
    line = f"{name}: ratio={ratio_s} ({', '.join(parts)}{', CPU time' if clock == 'cpu' else ''})"
    if target:
        verdict = "" if met is None else " MET" if met else " MISSED"
        if noise:
            verdict += " within the spread (noise: some repetitions meet it; rerun before calling it a regression)"
        line += f" target {target}" + verdict
    print(line, flush=True)
    row = {
        "figure": name,
        "ratio": ratio,
        "ours": ours,
        "baseline": baseline,
        "unit": unit,
        "target": target,
        "met": met,
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "reps": reps(args),
        "runs": runs or {},
        "ratio_spread": spread(rep_ratios),
        "ours_spread": spread(rep_values),
        "noise": noise,
        "size": size,
        "clock": clock,
        **(extra or {}),
        "git_sha": git_sha(),
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": os.environ.get("MACPO_BENCH_RUN"),
    }
    path = os.environ.get("MACPO_BENCH_RESULTS")
    if path or not args.smoke:
        with open(path or RESULTS, "a") as fh:
            fh.write(json.dumps(row, default=float) + "\n")
    return row


def skip(name: str, reason: str, args) -> None:
    print(f"{name}: skipped ({reason})", flush=True)
    path = os.environ.get("MACPO_BENCH_RESULTS")
    if path or not args.smoke:
        with open(path or RESULTS, "a") as fh:
            row = {"figure": name, "skipped": reason, "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
                   "run_id": os.environ.get("MACPO_BENCH_RUN"),
                   "git_sha": git_sha(), "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            fh.write(json.dumps(row) + "\n")


def tiny_model(tmp: Path, hidden: int = 64, layers: int = 2, extra_corpus: list[str] | None = None):
    """The tiny Llama of the earlier baseline measurements (hidden 64, 2 layers) with its BPE tokenizer, saved to ``tmp``."""
    from tiny import build_model, build_tokenizer

    tok = build_tokenizer(extra_corpus)
    model = build_model(tok, hidden=hidden, layers=layers, seed=0)
    model.config.max_position_embeddings = 1024
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    return tmp


def smollm2() -> Path:
    from macpo.builder.models import smollm2_path

    return smollm2_path()


def loaded_models(args):
    """``(label, model, tokenizer)`` for each model this run covers: the tiny fixture model
    (saved to a temporary folder while it is in use) and, in full runs, SmolLM2."""
    import tempfile

    from macpo.builder.models import load_model

    if "tiny" in models(args):
        with tempfile.TemporaryDirectory() as tmp:
            yield ("tiny", *load_model(tiny_model(Path(tmp)), device="cpu"))
    if "smollm2" in models(args):
        yield ("smollm2", *load_model(smollm2(), device="cpu"))
