"""build_ray_speedup: a tiny-model MACPO round-1 build (generation + scoring) on 2 Ray workers of
1 thread each, against the local builder on 1 thread, on this machine.

Both sides build the same round from a fresh copy of one round-0 run (3 agents, tiny Llama models
of tests/tiny.py, every shard missing), alternately, and must produce the same content hash. The
Ray side uses 2 workers that are already up: Ray's start-up cost (``ray.init`` of a private
instance + 2 worker processes importing torch) is paid once per build command and is reported
on its own line, ``build_ray_startup_seconds``; model loading is inside both sides' timings.
Wall clock: parallelism is what is measured. Target >= 1.6x on 2 cores.

The machine's own ceiling is measured beside it, in the same reps: one fixed pure-Python loop in
1 process, against two copies of it in 2 processes at once (``build_ray_machine_ceiling`` = 2 x
one / both). On a shared VM whose 2 vCPUs are contended by other tenants that ceiling moves
between ~1 and ~2 from minute to minute, and no 2-worker build can beat it.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import common

TARGET = 1.6
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


def main(argv=None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.single_thread()
    try:
        import ray  # noqa: F401
    except ImportError:
        common.skip("build_ray_speedup", "ray is not installed (pip install 'macpo[ray]')", args)
        return 0
    from test_ray_build import copy_run, make_round0

    from macpo.builder.executor import RayExecutor
    from macpo.builder.rounds import RoundBuilder

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    prompts, shard_size, new_tokens, hidden = SIZES[mode]
    tmp = Path(tempfile.mkdtemp(prefix="macpo-build-ray-"))
    try:
        run0 = make_round0(tmp / "run0", prompts=prompts, shard_size=shard_size, max_new_tokens=new_tokens, hidden=hidden)

        t0 = time.perf_counter()
        executor = RayExecutor(num_workers=2, num_cpus_per_worker=1, threads=1, progress=False)
        t_init = time.perf_counter() - t0
        executor.worker_pids()  # both actors constructed: worker processes up, torch imported
        t_ready = time.perf_counter() - t0
        hashes: dict[str, set] = {"ray_2_workers": set(), "local_1_thread": set()}
        copies = iter(range(10**6))

        def side(name: str, executor=None):
            def fn():
                cfg = copy_run(run0, tmp / f"{name}-{next(copies)}")
                b = RoundBuilder(cfg, progress=False, executor=executor)
                start = time.perf_counter()
                result = b.build_round(1)
                seconds = time.perf_counter() - start
                b.close()
                hashes[name].add(result.content_hash)
                shutil.rmtree(cfg.out)
                return seconds
            return fn

        pool = multiprocessing.get_context("spawn").Pool(2)
        pool.map(_spin, [1, 1])  # both processes up before any timing
        spin = SPIN // 100 if args.smoke else SPIN
        try:
            runs = common.interleave({"ray_2_workers": side("ray_2_workers", executor), "local_1_thread": side("local_1_thread"),
                                      # None: interleave would take a returned number as the side's seconds
                                      "cpu_2_processes": lambda: pool.map(_spin, [spin, spin]) and None,
                                      "cpu_1_process": lambda: pool.apply(_spin, (spin,)) and None},
                                     common.reps(args), warmup=not args.smoke)
            served = dict(executor.served)
        finally:
            executor.close()
            pool.terminate()
        if len(hashes["ray_2_workers"] | hashes["local_1_thread"]) != 1:
            raise AssertionError(f"ray and local builds differ: {hashes}")
        ours, base = common.median(runs["ray_2_workers"]), common.median(runs["local_1_thread"])
        ratio = base / ours
        shards = f"{prompts} prompts, shards of {shard_size}, {new_tokens} new tokens, width {hidden}"
        common.report(
            "build_ray_speedup", ratio=ratio, ours=ours, baseline=base, unit="s", args=args,
            target=f">= {TARGET} (2 Ray workers x 1 thread vs local 1 thread)", met=ratio >= TARGET, runs=runs,
            rep_ratios=common.paired(runs, lambda a, b: b / a, ours="ray_2_workers"), meets=lambda v: v >= TARGET,
            extra={"prompts": prompts, "shard_size": shard_size, "new_tokens": new_tokens, "hidden": hidden, "content_hash": hashes["ray_2_workers"].pop(),
                   "shards_per_worker": sorted(served.values()), "startup_seconds": t_ready},
            size=shards,
        )
        both, one = common.median(runs["cpu_2_processes"]), common.median(runs["cpu_1_process"])
        common.report(
            "build_ray_machine_ceiling", ratio=2 * one / both, ours=both, baseline=2 * one, unit="s", args=args,
            rep_ratios=[2 * a / b for a, b in zip(runs["cpu_1_process"], runs["cpu_2_processes"])],
            size="2 copies of a pure-Python loop in 2 processes at once vs 1 copy in 1 process, x2; in the same reps",
        )
        common.report(
            "build_ray_startup_seconds", ratio=None, ours=t_ready, baseline=None, unit="s", args=args,
            extra={"ray_init_seconds": t_init, "workers_ready_seconds": t_ready - t_init},
            size=f"ray.init {t_init:.2f} s + 2 workers ready {t_ready - t_init:.2f} s; once per build command",
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
