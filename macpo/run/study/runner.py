"""A study's runs: every (variant, seed) is an ordinary run (``DIR/runs/<variant>/seed-<s>``, each
with its own report) on the one executor, sharing a step cache (``DIR/step-cache``), several at
a time (``--jobs``)."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from macpo import config as config_mod
from macpo.cliutil import check_out_apart, check_out_path, check_owned, write_marker
from macpo.errors import UserError
from macpo.run.cache import SharedSteps, StepCache, Tally
from macpo.run.config import prepare_run
from macpo.run.execute import Stopped, execute, say
from macpo.run.procs import stop_stages
from macpo.run.study.tables import read_run, write_study
from macpo.run.study.variants import VARIANTS


def plan_runs(config: str, overrides: dict[str, str], variants: list[str], seeds: list[int], out: Path,
              vary_world: bool = True) -> list[tuple[str, int, dict]]:
    """(variant, seed, run-config mapping) for every run; the baseline always runs.

    With ``vary_world`` (the default) a seed also sets the world's seed (which prompts and pairs
    are drawn) and its pretraining seed (the pretrained models), so the study's intervals include
    world variance; without it, every seed runs on the config's one world."""
    p = Path(config)
    # The config's per-axis settings first, for the axis this study runs (--axes sets world.axis).
    base = config_mod.apply_overrides(config_mod.apply_axis_settings(config_mod.read_yaml(p), overrides), overrides)
    models = [str(base.get("student") or ""), *map(str, base.get("teachers") or [])]
    if not base.get("world") and not any("sandbox:" in m for m in models):
        # The study's intervals and differences are over per-prompt gold scores.
        raise UserError(f"{p}: macpo study needs the built-in sandbox's gold reward (a `world` section); "
                        "for real data run the variants with macpo run and compare their reports")
    name = str(base.get("name") or "study")
    runs = []
    # Seed-major: a study stopped part-way has whole seeds, and `--seeds` of those resumes into a table.
    for seed in seeds:
        for v in variants:
            data = config_mod.deep_merge(base, VARIANTS[v].overrides)
            # One dataset name for every run, so a shared store version fits any run's store.
            data.update(seed=seed, name=name, out=str((out / "runs" / v / f"seed-{seed}").resolve()))
            if vary_world and isinstance(data.get("world"), dict):
                world = data["world"] = dict(data["world"])
                world["pretrain"] = {**(world.get("pretrain") or {}), "seed": seed}
                world["seed"] = seed
            config_mod.from_dict(json.loads(json.dumps(data)))  # validate every run before running any
            runs.append((v, seed, data))
    return runs


def run_study(config: str, overrides: dict[str, str], variants: list[str], seeds: list[int], out: Path, *,
              n_boot: int = 1000, verbose: bool = False, jobs: int | None = None, vary_world: bool = True) -> Path:
    check_out_path(out)
    check_owned(out, ("study",), legacy=("step-cache",))  # step-cache: studies from before the marker
    runs = plan_runs(config, overrides, variants, seeds, out, vary_world)  # validates every run before writing anything
    check_out_apart(out, config_mod.reads_of(config_mod.from_dict(json.loads(json.dumps(runs[0][2])))))
    if jobs is None:  # as many runs as the usable CPUs hold steps of `threads` threads (0 = torch takes them all)
        threads = int(runs[0][2].get("threads", 1)) if runs else 1
        jobs = max(1, len(os.sched_getaffinity(0)) // threads) if threads > 0 else 1
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "study")
    shared = SharedSteps(StepCache(out / "step-cache"), Tally())
    stop = threading.Event()
    failures: list[BaseException] = []  # the first is the cause; later ones are runs stopped because of it
    t0 = time.time()

    def one(i: int, v: str, seed: int, data: dict):
        say(f"[{i}/{len(runs)}] {v} seed {seed}")
        cfg, resolved = prepare_run(None, {}, base=data)
        try:
            execute(cfg, resolved, shared=shared, label=f"{v} s{seed}", verbose=verbose, stop=stop)
        except Stopped:
            raise
        except BaseException as e:
            failures.append(e)  # list.append is atomic; the first one is the cause
            stop.set()
            raise
        return v, seed, cfg

    # Each step runs on `threads` torch threads (1 for the sandbox): with --jobs 2 two runs' steps use
    # both cores. A step two runs need waits on the first producer (StepCache.claim), never runs twice.
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(one, i, v, seed, data) for i, (v, seed, data) in enumerate(runs, 1)]
        try:
            results = [f.result() for f in futures]
        except BaseException as e:
            stop.set()
            for f in futures:
                f.cancel()
            # Ctrl-C: the stages run in their own process groups (out of the terminal's reach); stop them
            # here, or leaving `with` would wait for every running step to finish.
            cause = e if isinstance(e, KeyboardInterrupt) else (failures[0] if failures else e)
            if isinstance(e, KeyboardInterrupt):
                stop_stages()
            raise cause from None  # leaving `with` waits for the running runs
    wall = time.time() - t0
    read = [read_run(v, seed, cfg) for v, seed, cfg in results]
    seed_cfgs = {seed: cfg for v, seed, cfg in results if v == variants[0]} if vary_world else None
    return write_study(out, read, variants, seeds, shared.tally, wall, n_boot=n_boot, data_cfg=results[0][2],
                       setup={"config": config, "overrides": overrides, "jobs": jobs}, seed_cfgs=seed_cfgs)
