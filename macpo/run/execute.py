"""The one executor of ``macpo run`` and ``macpo study``: runs a plan's steps in order, resumably.

Every step records the hash of its inputs (:func:`macpo.run.plan.step_keys`) in
``STORE/run-state.json``. A step is up to date, and skipped, when its recorded key matches, its
output exists, and none of its dependencies ran again in this invocation (a dependency that
ran again may have written other bytes, so what was built from it is rebuilt). An interrupted
build resumes from its shard checkpoints.

With a shared step cache (``macpo study``), a step that is not up to date is first looked up in
the cache (:mod:`macpo.run.cache`): a hit restores its outputs instead of running it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from macpo.config import RunConfig
from macpo.errors import UserError
from macpo.layout import RunLayout
from macpo.run.cache import SharedSteps, cache_key, output_hash
from macpo.run.plan import Step, config_key_view, plan, step_keys
from macpo.run.procs import run_step, slug


class RunState:
    def __init__(self, path: Path, cfg: RunConfig):
        self.path = path
        self.data = {"name": cfg.name, "config_hash": cfg.hash(), "steps": []}
        if path.exists():
            self.data["steps"] = self._read_steps(path)

    @staticmethod
    def _read_steps(path: Path) -> list[dict]:
        """The steps recorded by an earlier run, or a one-line UserError for anything else: a run
        that guessed would redo (or skip) steps without saying why."""
        fix = "delete it to run every step again"
        try:
            old = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise UserError(f"{path} is not a macpo run state ({why}); {fix}") from None
        steps = old.get("steps", []) if isinstance(old, dict) else None
        if not isinstance(steps, list):
            raise UserError(f"{path} is not a macpo run state (expected an object with a list of steps); {fix}")
        for i, step in enumerate(steps):
            if not (isinstance(step, dict) and isinstance(step.get("name"), str)):
                raise UserError(f"{path}: step {i} has no name; {fix}")
        return steps

    def key_of(self, name: str) -> str | None:
        for s in self.data["steps"]:
            if s["name"] == name and s.get("status") == "done":
                return s.get("key")
        return None

    def record(self, steps: list[Step], keys: dict[str, str], done: dict[str, float]) -> None:
        self.data["steps"] = [
            {"name": s.name, "key": keys[s.name], "status": "done" if s.name in done else "pending", "seconds": done.get(s.name)}
            for s in steps
        ]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


class Stopped(Exception):
    """A run left between two steps because ``stop`` was set (another run of a study failed)."""


def say(line: str) -> None:
    # One write per line: print() writes the text and its newline separately, which two runs' threads interleave.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def execute(cfg: RunConfig, config_path: Path, *, verbose: bool = False, shared: SharedSteps | None = None,
            label: str | None = None, stop: threading.Event | None = None) -> None:
    """Run ``cfg``'s plan: each step up to date, restored from ``shared``'s cache, or run.

    ``label``: print one ``[label] step: status`` line per step (runs of a study, side by side)
    instead of the numbered progress of a single run."""
    layout = RunLayout(cfg)
    run_out = layout.out.resolve()
    steps = plan(cfg, config_path)
    keys = step_keys(cfg, steps)
    layout.store_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(layout.store_dir / "run-state.json", cfg)
    view = config_key_view(cfg) if shared is not None else None
    # What an earlier invocation finished, read before this one records anything over it.
    recorded = {s.name: state.key_of(s.name) for s in steps}
    done: dict[str, float] = {}
    redone: set[str] = set()
    hashes: dict[str, str] = {}  # step -> content hash of its outputs (the shared cache's dependency keys)
    width = len(str(len(steps)))
    t_run = time.time()
    if shared is not None:
        shared.tally.add(naive=len(steps))
    for i, step in enumerate(steps, 1):
        if stop is not None and stop.is_set():
            raise Stopped()
        head = f"[{i:>{width}}/{len(steps)}] {step.name}" if label is None else f"  [{label}] {step.name}"
        fresh = (recorded[step.name] == keys[step.name] and step.done()
                 and not any(d in redone for d in step.deps))
        outputs = [Path(o).resolve() for o in step.outputs]
        key = cache_key(step, run_out, view, [hashes[d] for d in step.deps]) if shared is not None else None
        if fresh:
            done[step.name] = 0.0
            status = "up to date"
            if shared is not None:
                shared.tally.add(up_to_date=1)
        else:
            redone.add(step.name)
            if label is None:
                print(f"{head} ...", end="" if not verbose else "\n", flush=True)
            if shared is not None and outputs:
                with shared.cache.claim(key):
                    status, seconds = _restore_or_run(step, key, shared, layout, run_out, outputs, verbose, cfg.threads)
            else:
                status, seconds = _restore_or_run(step, key, shared, layout, run_out, outputs, verbose, cfg.threads)
            done[step.name] = seconds
        if shared is not None:
            hashes[step.name] = output_hash(outputs) if outputs and all(o.exists() for o in outputs) else key
        state.record(steps, keys, done)
        if label is not None:
            say(f"{head}: {status}")
        elif fresh:
            print(f"{head}: up to date", flush=True)
        else:
            print(f" done in {done[step.name]:.1f}s" if not verbose else f"{head}: done in {done[step.name]:.1f}s", flush=True)
    if label is None:
        print(f"run {cfg.name} complete in {time.time() - t_run:.0f}s; output in {layout.out}", flush=True)


def _restore_or_run(step: Step, key: str | None, shared: SharedSteps | None, layout: RunLayout, run_out: Path,
                    outputs: list[Path], verbose: bool, threads: int) -> tuple[str, float]:
    """(status line, seconds) of a step that is not up to date."""
    # A step runs again when its inputs changed (its key): what it wrote last time is stale. Store
    # versions included: they never change in place, so a changed eval setting of a finished run
    # would otherwise meet its old evals version and be refused. Every output is in the run's folder.
    for path in dict.fromkeys([*step.clears, *outputs]):
        shutil.rmtree(path, ignore_errors=True)
    if shared is not None and outputs and shared.cache.has(key):
        shared.cache.restore(key, run_out, outputs)
        shared.tally.add(shared=1)
        return "shared", 0.0
    t0 = time.time()
    run_step(step, layout.log_path(slug(step.name)), verbose, threads)
    seconds = round(time.time() - t0, 2)
    if shared is not None:
        shared.tally.add(ran=1, seconds_ran=time.time() - t0)
        if outputs and all(o.exists() for o in outputs):
            shared.cache.save(key, run_out, outputs, {"step": step.name, "producer": str(run_out), "seconds": seconds})
    return f"ran in {time.time() - t0:.1f}s", seconds
