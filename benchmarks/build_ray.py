"""build_ray_speedup: a tiny-model MACPO round-1 build (generation + scoring) on 2 Ray workers of
1 thread each, against the local builder on 1 thread, on this machine.

Both sides build the same round from a fresh copy of one round-0 run (3 agents, tiny Llama models
of tests/tiny.py, every shard missing), alternately, and must produce the same content hash. The
Ray side uses 2 workers that are already up: Ray's start-up cost (``ray.init`` of a private
instance + 2 worker processes importing torch) is paid once per build command and is reported
on its own line, ``build_ray_startup_seconds``; model loading is inside both sides' timings.
Wall clock: parallelism is what is measured.

The machine's own ceiling is measured beside it, in the same reps: one fixed pure-Python loop in
1 process, against two copies of it in 2 processes at once (``build_ray_machine_ceiling`` = 2 x
one / both). On a shared VM whose 2 vCPUs are contended by other tenants that ceiling moves
between ~1 and ~2 from minute to minute, and no 2-worker build can beat it. So the target is on
``build_ray_of_ceiling`` = speedup / ceiling (ratio of the medians; each rep's speedup over the same
rep's ceiling in brackets): >= 0.95. A fixed speedup target (1.6x) measured the tenants, not Ray.

``build_ray_time_split`` names where a Ray build's time goes, from the executors' per-shard
records: both sides' wall split into driver-only time (outside the executor: reading inputs,
pairing, writing the round), model loads, generation, scoring and, on the Ray side, worker idle
time (before a worker's first shard, between shards, after its last), in worker-seconds over the
2 workers; checkpoint writes (on the driver, while the workers run) and result transfer (a
shard's end on its worker to its table on the driver) are printed beside them. The fraction of
the ceiling lost, 1 - speedup / ceiling, is split exactly into one term per part: what that part
costs the Ray build beyond the local build's part divided by the ceiling, over the Ray wall.
``--schedule plan`` measures the plan-order schedule (``ray.util.ActorPool``'s way) instead of
the default model-affine one.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import common

TARGET_OF_CEILING = 0.95
# prompts, shard size, new tokens, model width (2 layers): enough work per shard that Ray's
# per-shard and per-model costs are a small part of a build.
SIZES = {
    "full": (256, 32, 32, 128),
    "quick": (64, 16, 24, 64),
    "smoke": (8, 4, 4, 32),
}


def _spin(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


SPIN = 15_000_000


def _split(executor, calls: range, wall: float, writes: float, workers: int) -> dict:
    """Seconds of one build: ``wall`` = driver + (loads + generate + score + idle) / ``workers``; loads
    include releasing the previous model (the worker's garbage collection)."""
    picked = [executor.calls[c] for c in calls]
    shards = [t for t in executor.timeline if t.call in calls]
    out = {"wall": wall, "checkpoint_writes": writes, "loads": 0.0, "generate": 0.0, "score": 0.0, "releases": 0.0,
           "model_loads": sum(1 for t in shards if t.load_seconds > 0)}
    for t in shards:
        kind = "score" if "scoring" in executor.calls[t.call].desc else "generate"
        # A model switch costs its release (freeing the previous model) and its load.
        out["loads"] += t.load_seconds + t.release_seconds
        out["releases"] += t.release_seconds
        out[kind] += t.run_seconds
    in_calls = sum(c.end - c.start for c in picked)
    out["driver"] = wall - in_calls
    out["idle"] = workers * in_calls - out["loads"] - out["generate"] - out["score"]
    first = between = tail = 0.0
    for c, call in zip(calls, picked):
        for w in range(workers):
            mine = sorted((t for t in shards if t.call == c and t.worker == w), key=lambda t: t.start)
            if not mine:
                tail += call.end - call.start
                continue
            first += mine[0].start - call.start
            between += sum(b.start - a.end for a, b in zip(mine, mine[1:]))
            tail += call.end - mine[-1].end
    out.update(idle_first=first, idle_between=between, idle_tail=tail,
               transfer=sum(t.received - t.end for t in shards), transfer_mb=sum(t.nbytes for t in shards) / 1e6)
    return out


PARTS = ("driver", "loads", "generate", "score", "idle")


def _lost(ray: dict, local: dict, ceiling: float) -> dict:
    """1 - speedup / ceiling, one term per part: (ray part - local part / ceiling) / ray wall, parts
    in wall seconds (worker-seconds / 2 on the Ray side). The terms sum to the whole."""
    terms = {p: (ray[p] / (1 if p == "driver" else 2) - local[p] / ceiling) / ray["wall"] for p in PARTS}
    terms["total"] = 1 - local["wall"] / ray["wall"] / ceiling
    return terms


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--schedule", choices=("affine", "plan"), default="affine",
                   help="the Ray executor's schedule (default affine; plan = plan order, ActorPool's way)")
    args = p.parse_args(argv)
    common.single_thread()
    # Looked up, not imported: a private Ray instance binds to loopback only if Ray is first
    # imported by RayExecutor, which sets Ray's single-machine switch before (macpo.builder.executor_ray).
    if importlib.util.find_spec("ray") is None:
        common.skip("build_ray_speedup", "ray is not installed (pip install 'macpo[ray]')", args)
        return 0
    from test_ray_build import copy_run, make_round0

    import macpo.builder.rounds as rounds
    from macpo.builder.executor import LocalExecutor, RayExecutor
    from macpo.builder.rounds import RoundBuilder

    writes = [0.0]  # seconds the driver spends writing shard checkpoints
    atomic_parquet = rounds._atomic_parquet

    def timed_write(table, path):
        t = time.perf_counter()
        atomic_parquet(table, path)
        writes[0] += time.perf_counter() - t

    rounds._atomic_parquet = timed_write

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    prompts, shard_size, new_tokens, hidden = SIZES[mode]
    tmp = Path(tempfile.mkdtemp(prefix="macpo-build-ray-"))
    try:
        run0 = make_round0(tmp / "run0", prompts=prompts, shard_size=shard_size, max_new_tokens=new_tokens, hidden=hidden)

        # Start-up, once per rep for its spread (each a fresh private instance); the last one serves the builds.
        startups = []
        for rep in range(common.reps(args)):
            t0 = time.perf_counter()
            executor = RayExecutor(num_workers=2, num_cpus_per_worker=1, threads=1, progress=False, schedule=args.schedule)
            t_init = time.perf_counter() - t0
            executor.worker_pids()  # both actors constructed: worker processes up, torch imported
            startups.append((t_init, time.perf_counter() - t0))
            if rep < common.reps(args) - 1:
                executor.close()
        t_init = common.median([a for a, _ in startups])
        t_ready = common.median([b for _, b in startups])
        hashes: dict[str, set] = {"ray_2_workers": set(), "local_1_thread": set()}
        copies = iter(range(10**6))

        local = LocalExecutor(progress=False)
        splits: dict[str, list[dict]] = {"ray_2_workers": [], "local_1_thread": []}

        def side(name: str, executor, workers: int):
            def fn():
                cfg = copy_run(run0, tmp / f"{name}-{next(copies)}")
                b = RoundBuilder(cfg, progress=False, executor=executor)
                first, writes[0] = len(executor.calls), 0.0
                start = time.perf_counter()
                result = b.build_round(1)
                seconds = time.perf_counter() - start
                splits[name].append(_split(executor, range(first, len(executor.calls)), seconds, writes[0], workers))
                b.close()
                hashes[name].add(result.content_hash)
                shutil.rmtree(cfg.out)
                return seconds
            return fn

        pool = multiprocessing.get_context("spawn").Pool(2)
        pool.map(_spin, [1, 1])  # both processes up before any timing
        spin = SPIN // 100 if args.smoke else SPIN
        try:
            runs = common.interleave({"ray_2_workers": side("ray_2_workers", executor, 2),
                                      "local_1_thread": side("local_1_thread", local, 1),
                                      # None: interleave would take a returned number as the side's seconds
                                      "cpu_2_processes": lambda: pool.map(_spin, [spin, spin]) and None,
                                      "cpu_1_process": lambda: pool.apply(_spin, (spin,)) and None},
                                     common.reps(args), warmup=not args.smoke)
            served = dict(executor.served)
            loads = executor.load_report()
        finally:
            executor.close()
            pool.terminate()
        if len(hashes["ray_2_workers"] | hashes["local_1_thread"]) != 1:
            raise AssertionError(f"ray and local builds differ: {hashes}")
        ours, base = common.median(runs["ray_2_workers"]), common.median(runs["local_1_thread"])
        rep_speedups = common.paired(runs, lambda a, b: b / a, ours="ray_2_workers")
        rep_ceilings = [2 * a / b for a, b in zip(runs["cpu_1_process"], runs["cpu_2_processes"])]
        ratio = base / ours
        shards = f"{prompts} prompts, shards of {shard_size}, {new_tokens} new tokens, width {hidden}"
        common.report(
            "build_ray_speedup", ratio=ratio, ours=ours, baseline=base, unit="s", args=args,
            runs=runs, rep_ratios=rep_speedups,
            extra={"schedule": args.schedule, "prompts": prompts, "shard_size": shard_size, "new_tokens": new_tokens, "hidden": hidden, "content_hash": hashes["ray_2_workers"].pop(),
                   "shards_per_worker": sorted(served.values()), "startup_seconds": t_ready},
            size=shards,
        )
        both, one = common.median(runs["cpu_2_processes"]), common.median(runs["cpu_1_process"])
        common.report(
            "build_ray_machine_ceiling", ratio=2 * one / both, ours=both, baseline=2 * one, unit="s", args=args,
            rep_ratios=rep_ceilings,
            size="2 copies of a pure-Python loop in 2 processes at once vs 1 copy in 1 process, x2; in the same reps",
        )
        ceiling = 2 * one / both
        common.report(
            "build_ray_of_ceiling", ratio=ratio / ceiling, ours=ratio, baseline=ceiling, unit="x", args=args,
            target=f">= {TARGET_OF_CEILING} (build_ray_speedup / build_ray_machine_ceiling, same reps)",
            met=ratio / ceiling >= TARGET_OF_CEILING,
            rep_ratios=[s / c for s, c in zip(rep_speedups, rep_ceilings)], meets=lambda v: v >= TARGET_OF_CEILING,
            size="speedup of 2 Ray workers over the machine's own 2-process ceiling",
        )
        # The warm-up build is not a rep: keep the last reps' splits, paired with the ceiling of the same rep.
        reps = len(runs["cpu_1_process"])
        ray_s, loc_s = splits["ray_2_workers"][-reps:], splits["local_1_thread"][-reps:]
        lost = [_lost(r, lo, c) for r, lo, c in zip(ray_s, loc_s, rep_ceilings)]
        med = {side: {k: common.median([x[k] for x in xs]) for k in xs[0]} for side, xs in (("ray", ray_s), ("local", loc_s))}
        med_lost = {k: common.median([x[k] for x in lost]) for k in lost[0]}
        r, lo = med["ray"], med["local"]
        line = (f"ray {r['wall']:.2f} s = driver {r['driver']:.2f} + (loads {r['loads']:.2f} [{r['model_loads']:.0f} loads, releases {r['releases']:.2f}] + generate "
                f"{r['generate']:.2f} + score {r['score']:.2f} + idle {r['idle']:.2f} [first {r['idle_first']:.2f}, between "
                f"{r['idle_between']:.2f}, tail {r['idle_tail']:.2f}]) / 2; local {lo['wall']:.2f} s = driver {lo['driver']:.2f} + "
                f"loads {lo['loads']:.2f} [{lo['model_loads']:.0f}] + generate {lo['generate']:.2f} + score {lo['score']:.2f} + "
                f"in-call driver {lo['idle']:.2f}; checkpoint writes ray {r['checkpoint_writes']:.2f} / local "
                f"{lo['checkpoint_writes']:.2f} s; transfer {r['transfer']:.2f} s for {r['transfer_mb']:.1f} MB; "
                f"ceiling lost {med_lost['total']:.3f} = " + " + ".join(f"{p} {med_lost[p]:.3f}" for p in PARTS)
                + f" (medians of {reps} reps; schedule {args.schedule})")
        common.report(
            "build_ray_time_split", ratio=None, ours=r["wall"], baseline=lo["wall"], unit="s", args=args,
            rep_values=[x["wall"] for x in ray_s],
            extra={"schedule": args.schedule, "ray": ray_s, "local": loc_s, "ceilings": rep_ceilings, "lost": lost,
                   "median_lost": med_lost, "worker_loads": loads},
            size=line,
        )
        for text in loads:
            print(f"  {text}", flush=True)
        common.report(
            "build_ray_startup_seconds", ratio=None, ours=t_ready, baseline=None, unit="s", args=args,
            rep_values=[b for _, b in startups],
            extra={"ray_init_seconds": t_init, "workers_ready_seconds": t_ready - t_init},
            size=f"ray.init {t_init:.2f} s + 2 workers ready {t_ready - t_init:.2f} s (medians of {len(startups)} starts); once per build command",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
