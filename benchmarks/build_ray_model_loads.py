"""build_ray_model_loads: model loads of a MACPO round-1 build with K = 3 teachers on 2 Ray workers,
the model-affine schedule against the naive plan order.

The round (tiny Llama models of tests/tiny.py, every shard missing) generates with the student and
two teachers (the weak-label teacher's round-1 candidates are its weak labels) and scores with the
student and all three teachers: 7 models (3 generators, 4 scorers) for 2 workers. Plan order hands
the next shard to whichever worker is free (``ray.util.ActorPool``'s way), so a worker loads a model
again whenever its next shard is another model's; the affine schedule gives each worker a queue of
whole models, so each worker loads each of its models once. Both schedules build the same round from
fresh copies of one round-0 run, alternately, and must give the local build's content hash.

The figure is the ratio of total model loads per build, plan order over affine (medians of the
reps); the target is that under the affine schedule no worker loads any model twice in a build.
Loads are counted by the workers themselves (``RayExecutor.loads``). The 2 workers are up before
the first build and serve every build of both schedules.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import common

# prompts, shard size, new tokens, model width (2 layers)
SIZES = {
    "full": (64, 8, 16, 64),
    "quick": (32, 8, 8, 32),
    "smoke": (8, 4, 4, 32),
}
TEACHERS = 3


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.single_thread()
    # Looked up, not imported: a private Ray instance binds to loopback only if Ray is first
    # imported by RayExecutor, which sets Ray's single-machine switch before (macpo.builder.executor_ray).
    if importlib.util.find_spec("ray") is None:
        common.skip("build_ray_model_loads", "ray is not installed (pip install 'macpo[ray]')", args)
        return 0
    from test_ray_build import copy_run, make_round0

    from macpo.builder.executor import RayExecutor
    from macpo.builder.rounds import RoundBuilder, build

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    prompts, shard_size, new_tokens, hidden = SIZES[mode]
    tmp = Path(tempfile.mkdtemp(prefix="macpo-ray-loads-"))
    try:
        run0 = make_round0(tmp / "run0", prompts=prompts, shard_size=shard_size, max_new_tokens=new_tokens,
                           hidden=hidden, teachers=TEACHERS)
        expected = build(copy_run(run0, tmp / "local"), 1, progress=False).content_hash
        copies = iter(range(10**6))
        per_build: dict[str, list[dict]] = {"affine": [], "plan": []}
        # One pair of workers for both schedules (the schedule is the driver's alone). Every build
        # copies round 0 to a folder of its own, so no model of one build is loaded in another.
        executor = RayExecutor(num_workers=2, num_cpus_per_worker=1, threads=1, progress=False)
        try:
            executor.worker_pids()  # workers up before any build

            def side(schedule: str):
                def fn():
                    executor.schedule = schedule
                    cfg = copy_run(run0, tmp / f"{schedule}-{next(copies)}")
                    before = {w: list(s.models) for w, s in executor.loads.items()}
                    b = RoundBuilder(cfg, progress=False, executor=executor)
                    start = time.perf_counter()
                    result = b.build_round(1)
                    seconds = time.perf_counter() - start
                    b.close()
                    if result.content_hash != expected:
                        raise AssertionError(f"{schedule} build {result.content_hash} != local {expected}")
                    # This build's loads per worker: what each worker loaded since the build before.
                    models = {w: s.models[len(before.get(w, [])):] for w, s in executor.loads.items()}
                    per_build[schedule].append({
                        "seconds": seconds,
                        "loads": [len(models.get(w, [])) for w in range(2)],
                        "distinct": [len(set(models.get(w, []))) for w in range(2)],
                        "shards": b.shard_counts["run"],
                    })
                    shutil.rmtree(cfg.out)
                    return seconds
                return fn

            if not args.smoke:  # the workers' first model loads import model code: not part of either schedule
                side("affine")()
                per_build["affine"].clear()
            runs = common.interleave({"affine": side("affine"), "plan": side("plan")}, common.reps(args), warmup=False)
            report = executor.load_report()
        finally:
            executor.close()
        total = {s: [sum(b["loads"]) for b in builds] for s, builds in per_build.items()}
        repeats = {s: [sum(b["loads"]) - sum(b["distinct"]) for b in builds] for s, builds in per_build.items()}
        ours, base = common.median(total["affine"]), common.median(total["plan"])
        once = not any(repeats["affine"])
        last = {s: builds[-1] for s, builds in per_build.items()}
        common.report(
            "build_ray_model_loads", ratio=base / ours, ours=ours, baseline=base, unit="loads", args=args,
            target="each worker loads each of its models once per build (affine schedule)", met=once, runs=runs,
            rep_ratios=[b / a for a, b in zip(total["affine"], total["plan"])],
            extra={"per_build": per_build, "repeated_loads": repeats, "content_hash": expected, "teachers": TEACHERS,
                   "prompts": prompts, "shard_size": shard_size, "worker_report": report},
            size=(f"K={TEACHERS} teachers, 2 workers, {last['affine']['shards']} shards, 7 models; loads per worker "
                  f"affine {last['affine']['loads']} (repeats {repeats['affine'][-1]}) vs plan order "
                  f"{last['plan']['loads']} (repeats {repeats['plan'][-1]}); build seconds affine "
                  f"{common.median(runs['affine']):.2f} vs plan {common.median(runs['plan']):.2f}; "
                  f"{prompts} prompts, shards of {shard_size}"),
        )
        for line in report:  # both schedules' builds together
            print(f"  {line}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
